// Socket types: the server's matching rule and a colour per type.

/** The server's rule (COMFY_COMPAT §1): equal strings; `*` either side; comma lists match on any
 * common member. Case-sensitive, unlike litegraph's own check. */
export function typesMatch(produced, wanted) {
  if (produced === undefined || produced === null || wanted === undefined || wanted === null) return false;
  if (Array.isArray(produced)) produced = "COMBO";
  if (Array.isArray(wanted)) wanted = "COMBO";
  produced = String(produced);
  wanted = String(wanted);
  if (produced === "*" || wanted === "*" || produced === wanted) return true;
  const a = produced.split(",").map((s) => s.trim());
  const b = new Set(wanted.split(",").map((s) => s.trim()));
  return a.some((t) => t === "*" || b.has(t) || b.has("*"));
}

const KNOWN = {
  IMAGE: "#64B5F6", MASK: "#81C784", LATENT: "#FF9CF9", CONDITIONING: "#FFA931", MODEL: "#B39DDB",
  CLIP: "#FFD500", VAE: "#FF6E6E", LLM: "#4DD0E1", STRING: "#A1DE7A", INT: "#29699C", FLOAT: "#AAEE88",
  BOOLEAN: "#D4A017", COMBO: "#AAAAAA", "*": "#CCCCCC",
};

/** A stable colour for every type: known ones as in ComfyUI, others hashed onto the hue circle. */
export function typeColor(type) {
  const key = Array.isArray(type) ? "COMBO" : String(type);
  if (KNOWN[key]) return KNOWN[key];
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 62%)`;
}

/** Tell litegraph how to colour links and slots, and to use the server's type rule. */
export function installTypeRules(LiteGraph, LGraphCanvas, canvas, types) {
  for (const type of types) {
    const color = typeColor(type);
    LGraphCanvas.link_type_colors[type] = color;
    canvas.default_connection_color_byType[type] = color;
    canvas.default_connection_color_byTypeOff[type] = color;
  }
  LiteGraph.isValidConnection = (a, b) => {
    // litegraph passes "" / 0 for event slots; we have none, so treat them as wildcards like it does
    if (a === "" || b === "" || a === 0 || b === 0) return true;
    return typesMatch(a, b);
  };
}
