// Text chunks of a PNG (tEXt, zTXt, iTXt), as written by nodegraph's and ComfyUI's SaveImage:
// `workflow` holds the canvas (UI) workflow, `prompt` the API format.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8");

/** `{keyword: text}` for every text chunk before IDAT ends (first occurrence wins). */
export async function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = {};
  let pos = 8;
  while (pos + 12 <= bytes.length) {
    const length = view.getUint32(pos);
    const kind = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    pos += 12 + length;
    if (kind === "IEND") break;
    if (kind !== "tEXt" && kind !== "zTXt" && kind !== "iTXt") continue;
    const zero = data.indexOf(0);
    if (zero < 1) continue;
    const keyword = latin1.decode(data.subarray(0, zero));
    if (keyword in out) continue;
    try {
      if (kind === "tEXt") {
        out[keyword] = latin1.decode(data.subarray(zero + 1));
      } else if (kind === "zTXt") {
        out[keyword] = latin1.decode(await inflate(data.subarray(zero + 2)));
      } else {
        const compressed = data[zero + 1] === 1;
        let p = zero + 3;
        const langEnd = data.indexOf(0, p);
        const transEnd = data.indexOf(0, langEnd + 1);
        if (langEnd < 0 || transEnd < 0) continue;
        p = transEnd + 1;
        const text = data.subarray(p);
        out[keyword] = utf8.decode(compressed ? await inflate(text) : text);
      }
    } catch {
      // an unreadable chunk is skipped, like a missing one
    }
  }
  return out;
}

/** The workflow a PNG carries: the canvas one if present, else the API prompt; null if none. */
export async function workflowFromPng(buffer) {
  const text = await readPngText(buffer);
  for (const key of ["workflow", "prompt"]) {
    if (text[key]) {
      try { return JSON.parse(text[key]); } catch { /* try the next */ }
    }
  }
  return null;
}
