"""Small ComfyUI custom node packs written into a temporary ``custom_nodes/`` folder, in ComfyUI's
classic style: each pack is the source ComfyUI would import, covering one part of the protocol or of
the helper modules. :func:`write_packs` writes the chosen ones (all by default)."""

from __future__ import annotations

import textwrap
from pathlib import Path

#: the classic protocol, one class per feature
PROTOCOL = '''
import asyncio
import folder_paths
import nodes
import server
import comfy.utils
import comfy.model_management
import comfy.samplers
import comfy.sd                      # an internal nodegraph does not provide: imports fine
from comfy_extras.nodes_mask import composite   # the same, deeper
from comfy_execution.graph import ExecutionBlocker
from comfy_execution.graph_utils import GraphBuilder
from comfy.comfy_types import IO

CALLS = {"mapped": 0, "changed": 0, "objects": 0}


class Add:
    """Sums two INTs; reports progress and a message, and hands back what its hidden inputs held."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 1, "min": 0, "max": 100}), "b": ("INT", {"default": 2})},
                "hidden": {"uid": "UNIQUE_ID", "the_prompt": "PROMPT", "info": "EXTRA_PNGINFO",
                           "dyn": "DYNPROMPT"}}
    RETURN_TYPES = ("INT", "STRING")
    RETURN_NAMES = ("sum", "seen")
    OUTPUT_TOOLTIPS = ("a + b", "what the hidden inputs held")
    FUNCTION = "run"
    CATEGORY = "ngtest/math"
    DESCRIPTION = "Adds two numbers."

    def __init__(self):
        CALLS["objects"] += 1

    def run(self, a, b, uid=None, the_prompt=None, info=None, dyn=None):
        bar = comfy.utils.ProgressBar(2)
        bar.update(1)
        bar.update_absolute(2)
        server.PromptServer.instance.send_sync("ngtest.added", {"uid": uid, "sum": a + b})
        node = dyn.get_node(uid)["class_type"] if dyn.has_node(uid) else "expansion child"
        seen = "|".join([str(uid), str(sorted(the_prompt)), str(info), node])
        return (a + b, seen)


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (IO.ANY,)}}
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "ngtest"

    def show(self, value):
        return {"ui": {"text": [repr(value)]}}


class ShowResult:
    """An output node that also returns its input (``{"ui", "result"}``)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ("*",)
    FUNCTION = "show"
    OUTPUT_NODE = True

    def show(self, value):
        return {"ui": {"text": [str(value)]}, "result": (value,)}


class Range:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 0, "max": 10})}}
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "make"

    def make(self, count):
        return (list(range(count)),)


class Double:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "double"

    def double(self, value):
        CALLS["mapped"] += 1
        return (value * 2,)


class Total:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True}), "scale": ("INT", {"default": 1})}}
    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "total"

    def total(self, values, scale):
        return (sum(values) * scale[0],)


class Changed:
    """IS_CHANGED reads a file: the node reruns when the file changes."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "read"

    @classmethod
    def IS_CHANGED(cls, path):
        with open(path) as handle:
            return [handle.read()]   # a list: compared by value

    def read(self, path):
        CALLS["changed"] += 1
        with open(path) as handle:
            return (handle.read(),)


class Validated:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": 0, "max": 10}),
                             "other": ("INT,FLOAT", {"forceInput": True})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def VALIDATE_INPUTS(cls, value, input_types):
        if value == 7:
            return "seven is not allowed"
        if input_types.get("other") not in ("INT", "FLOAT", "INT,FLOAT"):
            return f"other must be a number, got {input_types.get('other')}"
        return True

    def run(self, value, other):
        return (value + int(other),)


class LazySwitch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pick_first": ("BOOLEAN", {"default": True}),
                             "first": ("*", {"lazy": True}), "second": ("*", {"lazy": True})}}
    RETURN_TYPES = ("*",)
    FUNCTION = "switch"

    def check_lazy_status(self, pick_first, first=None, second=None):
        return ["first"] if pick_first else ["second"]

    def switch(self, pick_first, first=None, second=None):
        return (first if pick_first else second,)


class LazyNoCheck:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*", {"lazy": True})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, value=None):
        return (repr(value),)


class Block:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "block": ("BOOLEAN", {"default": True}),
                             "message": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, block, message):
        if block:
            return (ExecutionBlocker(message or None),)
        return (value,)


class Expand:
    """Expands into a chain of Add nodes (graph expansion)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"start": ("INT", {"default": 0}), "steps": ("INT", {"default": 3, "min": 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "expand"

    def expand(self, start, steps):
        graph = GraphBuilder()
        value = start
        for _ in range(steps):
            node = graph.node("NgAdd", a=value, b=1)
            value = node.out(0)
        return {"result": (value,), "expand": graph.finalize()}


class Ids:
    """Hidden kinds of newer ComfyUI versions: PROMPT_ID is filled, an unknown kind is not."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "hidden": {"pid": "PROMPT_ID", "later": "SOME_FUTURE_KIND"}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, pid=None, later="its default"):
        return (f"{pid}|{later}",)


class Raise:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        raise ValueError(f"the pack refuses {value}")


class Unsupported:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    def load(self):
        return (comfy.sd.load_checkpoint_guess_config("x.safetensors"),)


class Async:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 5})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    async def run(self, value):
        await asyncio.sleep(0)
        return (value + 100,)


class Folders:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt": (folder_paths.get_filename_list("checkpoints"),),
                             "sampler": (comfy.samplers.KSampler.SAMPLERS,)}}
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    FUNCTION = "run"

    def run(self, ckpt, sampler):
        return (folder_paths.get_full_path_or_raise("checkpoints", ckpt), folder_paths.get_input_directory(),
                str(comfy.model_management.get_torch_device()))


class InvertTwice:
    """Calls a core node the way packs do (nodes.ImageInvert().invert)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, image):
        inverter = nodes.ImageInvert()
        once = getattr(inverter, inverter.FUNCTION)(image)[0]
        return (comfy.utils.common_upscale(once.movedim(-1, 1), 4, 2, "bilinear", "disabled").movedim(1, -1),)


class MaskPreview(nodes.SaveImage):
    """Subclasses SaveImage and saves to the temp folder (ComfyUI_essentials' MaskPreview+ pattern)."""
    def __init__(self):
        self.output_dir = folder_paths.get_temp_directory()
        self.type = "temp"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}
    FUNCTION = "execute"
    CATEGORY = "ngtest"

    def execute(self, mask, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        preview = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        return self.save_images(preview, filename_prefix, prompt, extra_pnginfo)


class AnyInputs(dict):
    """The "accept any input" mapping some packs put in INPUT_TYPES (KJNodes' FlexibleOptionalInputType)."""
    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return dict.get(self, key, ("*",))


class JoinAll:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sep": ("STRING", {"default": ","})}, "optional": AnyInputs()}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "join"

    def join(self, sep, **kwargs):
        return (sep.join(f"{key}={kwargs[key]}" for key in sorted(kwargs)),)


class SumLinks:
    """Declares value_1; a frontend extension adds value_2, value_3 … as links (ComfyUI passes them)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value_1": ("INT", {"forceInput": True})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "total"

    def total(self, **kwargs):
        return (sum(kwargs.values()),)


NODE_CLASS_MAPPINGS = {
    "NgJoinAll": JoinAll, "NgSumLinks": SumLinks, "NgIds": Ids,
    "NgAdd": Add, "NgShow": Show, "NgShowResult": ShowResult, "NgRange": Range, "NgDouble": Double,
    "NgTotal": Total, "NgChanged": Changed, "NgValidated": Validated, "NgLazySwitch": LazySwitch,
    "NgLazyNoCheck": LazyNoCheck, "NgBlock": Block, "NgExpand": Expand, "NgRaise": Raise,
    "NgUnsupported": Unsupported, "NgAsync": Async, "NgFolders": Folders, "NgInvertTwice": InvertTwice,
    "NgMaskPreview": MaskPreview,
    "ImageInvert": Raise,   # a core node's name: ComfyUI does not let a pack replace it
}
NODE_DISPLAY_NAME_MAPPINGS = {"NgAdd": "Add (ngtest)"}
'''

#: a pack with HTTP routes, a web folder and a node that messages its client
ROUTES = '''
from aiohttp import web
import server

routes = server.PromptServer.instance.routes


@routes.get("/ngroutes/hello")
async def hello(request):
    return web.json_response({"hello": request.query.get("name", "world")})


@routes.post("/ngroutes/ping")
async def ping(request):
    body = await request.json()
    server.PromptServer.instance.send_sync("ngroutes.pong", {"got": body.get("value")}, body.get("sid"))
    return web.json_response({"sent": True})


class Ping:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}
    RETURN_TYPES = ()
    FUNCTION = "ping"
    OUTPUT_NODE = True

    def ping(self, text):
        instance = server.PromptServer.instance
        instance.send_sync("ngroutes.ping", {"text": text, "node": instance.last_node_id,
                                             "client": instance.client_id})
        return {"ui": {"text": [text]}}


WEB_DIRECTORY = "./js"
NODE_CLASS_MAPPINGS = {"NgPing": Ping}
'''

EXTENSION_JS = 'import { app } from "../../scripts/app.js";\napp.registerExtension({ name: "ngroutes.ext" });\n'

BROKEN_IMPORT = '''
import folder_paths
raise RuntimeError("this pack needs a library that is not installed")
'''

SINGLE_FILE = '''
class Hello:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "you"})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "hello"

    def hello(self, name):
        return ("hello " + name,)


NODE_CLASS_MAPPINGS = {"NgHello": Hello}
'''

HALF_BROKEN = '''
class Good:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self):
        return (1,)


class NoFunction:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("INT",)


NODE_CLASS_MAPPINGS = {"NgGood": Good, "NgNoFunction": NoFunction}
'''

#: the V3 schema: a ComfyExtension from comfy_entrypoint, one class per feature
V3 = '''
import asyncio
from comfy_api.latest import ComfyExtension, io, ui


class Add(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NgV3Add", display_name="Add (V3)", category="ngtest/v3", description="Adds or multiplies.",
            inputs=[io.Int.Input("a", default=1, min=0, max=100), io.Int.Input("b", default=2),
                    io.Combo.Input("mode", options=["sum", "product"], default="sum")],
            outputs=[io.Int.Output(display_name="result", tooltip="the number"), io.String.Output()],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, a, b, mode):
        value = a + b if mode == "sum" else a * b
        return io.NodeOutput(value, f"{cls.hidden.unique_id}:{value}")


class Show(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NgV3Show", inputs=[io.AnyType.Input("value")], is_output_node=True)

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(ui=ui.PreviewText(repr(value)))


class Switch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NgV3Switch",
                         inputs=[io.Boolean.Input("pick_first", default=True),
                                 io.AnyType.Input("first", lazy=True), io.AnyType.Input("second", lazy=True)],
                         outputs=[io.AnyType.Output()])

    @classmethod
    def check_lazy_status(cls, pick_first, first=None, second=None):
        return ["first"] if pick_first else ["second"]

    @classmethod
    def execute(cls, pick_first, first=None, second=None):
        return io.NodeOutput(first if pick_first else second)


class Checked(io.ComfyNode):
    CALLS = [0]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NgV3Checked", inputs=[io.Int.Input("value", default=1)],
                         outputs=[io.Int.Output()])

    @classmethod
    def validate_inputs(cls, value):
        return True if value <= 5 else f"{value} is more than 5"

    @classmethod
    def fingerprint_inputs(cls, value):
        return value

    @classmethod
    def execute(cls, value):
        cls.CALLS[0] += 1
        return io.NodeOutput(value)


class Block(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NgV3Block", inputs=[], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls):
        return io.NodeOutput(block_execution="blocked by a V3 node")


class Twice(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NgV3Twice",
                         inputs=[io.MultiType.Input(io.Int.Input("x", default=3), types=[io.Float])],
                         outputs=[io.Float.Output()])

    @classmethod
    async def execute(cls, x):
        await asyncio.sleep(0)
        return io.NodeOutput(float(x) * 2)


class Preview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NgV3Preview", inputs=[io.Image.Input("image")], is_output_node=True)

    @classmethod
    def execute(cls, image):
        return io.NodeOutput(ui=ui.PreviewImage(image, cls=cls))


class Calc(io.ComfyNode):
    """An Autogrow group: flat inputs values.a, values.b, … reach execute as one dict."""
    @classmethod
    def define_schema(cls):
        template = io.Autogrow.TemplateNames(input=io.MultiType.Input("v", [io.Int, io.Float]),
                                             names=["a", "b", "c"], min=2)
        return io.Schema(node_id="NgV3Calc", inputs=[io.Autogrow.Input("values", template=template),
                                                     io.Combo.Input("op", options=["sum", "product"])],
                         outputs=[io.Float.Output()])

    @classmethod
    def execute(cls, values, op):
        total = 0.0 if op == "sum" else 1.0
        for name in sorted(values):
            total = total + values[name] if op == "sum" else total * values[name]
        return io.NodeOutput(total)


class Adjust(io.ComfyNode):
    """MatchType in and out, and a DynamicCombo whose chosen option brings its own inputs."""
    @classmethod
    def define_schema(cls):
        template = io.MatchType.Template("number", [io.Int, io.Float])
        return io.Schema(
            node_id="NgV3Adjust",
            inputs=[io.MatchType.Input("value", template=template),
                    io.DynamicCombo.Input("how", options=[
                        io.DynamicCombo.Option(key="scale", inputs=[io.Float.Input("amount", default=2.0, min=0, max=4)]),
                        io.DynamicCombo.Option(key="offset", inputs=[io.Float.Input("amount", default=1.0, min=-10, max=10),
                                                                     io.Boolean.Input("negate", default=False)]),
                    ])],
            outputs=[io.MatchType.Output(template, display_name="adjusted")])

    @classmethod
    def execute(cls, value, how):
        if how["how"] == "scale":
            return io.NodeOutput(value * how["amount"])
        result = value + how["amount"]
        return io.NodeOutput(-result if how["negate"] else result)


class NeedsInternals(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from comfy_extras.nodes_lt import LTXVAddGuide
        return LTXVAddGuide.GET_SCHEMA()

    @classmethod
    def execute(cls):
        return io.NodeOutput()


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [Add, Show, Switch, Checked, Block, Twice, Preview, Calc, Adjust, NeedsInternals]


async def comfy_entrypoint():
    return Extension()
'''

PACKS = {"ngtest_protocol": PROTOCOL, "ngroutes": ROUTES, "broken_import": BROKEN_IMPORT,
         "ng_single.py": SINGLE_FILE, "half_broken": HALF_BROKEN, "ngv3": V3}


def write_packs(folder: Path, *names: str) -> Path:
    """Write the named packs (all when none) into ``folder`` (created); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or tuple(PACKS):
        source = textwrap.dedent(PACKS[name]).lstrip()
        if name.endswith(".py"):
            (folder / name).write_text(source)
            continue
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "__init__.py").write_text(source)
        if name == "ngroutes":
            (folder / name / "js").mkdir(exist_ok=True)
            (folder / name / "js" / "ext.js").write_text(EXTENSION_JS)
    (folder / "notes.txt").write_text("not a pack\n")
    (folder / "old_pack.disabled").mkdir(exist_ok=True)
    return folder
