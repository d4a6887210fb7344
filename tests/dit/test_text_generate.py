"""TextGenerate (nodes/dit/text_generate.py) on tiny random Qwen3 and Qwen2.5-VL text encoders saved as the
single files users have (ComfyUI's layouts), loaded by CLIPLoader: the text equals transformers'
``generate`` on the same weights for greedy and seeded sampling, ComfyUI's sampler rule holds, the
widget layouts of the official templates map, and bad inputs give errors naming the input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.errors import ValidationFailed
from nodegraph.registry import default_registry
from nodegraph.workflow.ui_format import map_widget_values

from nodegraph_nodes.dit import text_generate as tg
from tests.dit.tiny_qwen import QWEN3_CHAT_TEMPLATE, qwen25vl, qwen25vl_comfy_layout, qwen3, write_qwen_tokenizer
from tests.helpers.engines import make_engine

PROMPT = "a red fox in snow"


@pytest.fixture(scope="module")
def te_root(tmp_path_factory):
    """models/text_encoders with a Qwen3 file (no lm_head: tied), a Qwen2.5-VL file (ComfyUI's layout with
    lm_head), the same Qwen2.5-VL without lm_head, and their tokenizers."""
    root = tmp_path_factory.mktemp("textgen")
    te = root / "models" / "text_encoders"
    q3_tok = write_qwen_tokenizer(te / "qwen3_tokenizer", QWEN3_CHAT_TEMPLATE)
    q25_tok = write_qwen_tokenizer(te / "qwen25_tokenizer")
    q3, q25 = qwen3(q3_tok), qwen25vl(q25_tok)
    save_file({"model." + k: v.contiguous() for k, v in q3.state_dict().items()}, str(te / "tiny_qwen_3.safetensors"))
    layout = qwen25vl_comfy_layout(q25)
    save_file(layout, str(te / "tiny_qwen_2.5_vl.safetensors"))
    save_file({k: v for k, v in layout.items() if k != "lm_head.weight"}, str(te / "tiny_qwen_2.5_vl_nohead.safetensors"))
    return {"root": root, "qwen3": q3, "qwen3_tok": q3_tok, "qwen25": q25, "qwen25_tok": q25_tok}


@pytest.fixture(scope="module")
def engine(te_root, tmp_path_factory):
    eng = make_engine(te_root["root"], tmp_path_factory.mktemp("run"), default_registry(packs=False))
    yield eng
    eng.close()


def _run(engine, clip_name: str, clip_type: str, **inputs):
    g = Graph()
    clip = g.node("CLIPLoader", clip_name=clip_name, type=clip_type)
    node = g.node("TextGenerate", clip=clip, **inputs)
    g.node("PreviewAny", source=node[0])
    g.node("PreviewAny", source=node[1])
    result = engine.run(g)
    return result, node.id


def _text(engine, clip_name, clip_type, **inputs) -> tuple[str, str]:
    result, nid = _run(engine, clip_name, clip_type, **inputs)
    result.raise_for_status()
    return result.value(nid, 0), result.value(nid, 1)


def _qwen3_lm(te_root):
    from transformers import Qwen3ForCausalLM

    base = te_root["qwen3"]
    lm = Qwen3ForCausalLM(base.config).eval()
    lm.model.load_state_dict(base.state_dict())
    lm.lm_head.weight = lm.model.embed_tokens.weight  # tied, as the released 4B
    return lm


def _stops(tok):
    return [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]


def _reference(lm, tok, text: str, max_new: int, seed: int | None = None, **sampling) -> str:
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                          do_sample=seed is not None, eos_token_id=_stops(tok), pad_token_id=_stops(tok)[0],
                          **sampling)
    return tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()


def test_qwen3_greedy_equals_transformers_generate(engine, te_root):
    text, thinking = _text(engine, "tiny_qwen_3.safetensors", "lumina2", prompt=PROMPT, max_length=24,
                           sampling_mode="off")
    chat = te_root["qwen3_tok"].apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                   add_generation_prompt=True, enable_thinking=False)
    assert chat.endswith("<think>\n\n</think>\n\n")  # our template is the model's own, thinking off
    expected = _reference(_qwen3_lm(te_root), te_root["qwen3_tok"], chat, 24)
    assert text == expected and len(text) > 0 and thinking == ""


def test_qwen3_seeded_sampling_equals_transformers_generate(engine, te_root):
    lm, tok = _qwen3_lm(te_root), te_root["qwen3_tok"]
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    # ComfyUI's recipe and transformers' coincide where top-k is off and there is no penalty: softmax of
    # logits / temperature (top-p filtered), one multinomial draw per token from the seeded generator.
    for seed, temperature, top_p in ((7, 0.8, 1.0), (11, 1.3, 0.9)):
        text, _ = _text(engine, "tiny_qwen_3.safetensors", "lumina2", prompt=PROMPT, max_length=20,
                        sampling_mode="on", **{"sampling_mode.temperature": temperature, "sampling_mode.top_k": 0,
                                               "sampling_mode.top_p": top_p, "sampling_mode.min_p": 0.0,
                                               "sampling_mode.repetition_penalty": 1.0,
                                               "sampling_mode.seed": seed})
        expected = _reference(lm, tok, chat, 20, seed=seed, temperature=temperature, top_k=0, top_p=top_p)
        assert text == expected
    other, _ = _text(engine, "tiny_qwen_3.safetensors", "lumina2", prompt=PROMPT, max_length=20, sampling_mode="on",
                     **{"sampling_mode.temperature": 1.3, "sampling_mode.top_k": 0, "sampling_mode.top_p": 0.9,
                        "sampling_mode.min_p": 0.0, "sampling_mode.repetition_penalty": 1.0,
                        "sampling_mode.seed": 12})
    assert other != text  # the seed matters


def test_thinking_and_raw_prompt_templates(engine, te_root):
    lm, tok = _qwen3_lm(te_root), te_root["qwen3_tok"]
    text, _ = _text(engine, "tiny_qwen_3.safetensors", "lumina2", prompt=PROMPT, max_length=12, sampling_mode="off",
                    thinking=True)
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    assert text == _reference(lm, tok, chat, 12)
    raw, _ = _text(engine, "tiny_qwen_3.safetensors", "lumina2", prompt=PROMPT, max_length=12, sampling_mode="off",
                   use_default_template=False)
    assert raw == _reference(lm, tok, PROMPT, 12)


def test_qwen25vl_with_lm_head_and_image_equals_transformers_generate(engine, te_root):
    from nodegraph_nodes.dit.llm_text import to_pil, vision_inputs

    model, tok = te_root["qwen25"], te_root["qwen25_tok"]
    text, _ = _text(engine, "tiny_qwen_2.5_vl.safetensors", "qwen_image", prompt=PROMPT, max_length=16,
                    sampling_mode="off")
    chat = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert text == _reference(model, tok, chat, 16)

    image = torch.rand(1, 56, 84, 3, generator=torch.Generator().manual_seed(3))
    chat_img = f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    inputs = vision_inputs(tok, model.config.vision_config, chat_img, [to_pil(image[0])])
    with torch.inference_mode():
        out = model.generate(input_ids=inputs["input_ids"], attention_mask=torch.ones_like(inputs["input_ids"]),
                             pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                             max_new_tokens=16, do_sample=False, eos_token_id=_stops(tok), pad_token_id=_stops(tok)[0])
    expected = tok.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True).strip()
    got = tg.generate_text(_ctx(engine), _load_clip(engine, "tiny_qwen_2.5_vl.safetensors", "qwen_image"), PROMPT,
                           max_length=16, settings=dict(tg.OFF_DEFAULTS, do_sample=False), image=image)
    assert got.strip() == expected and expected != text


class _Ctx:
    def __init__(self, engine):
        self.device = "cpu"
        self._engine = engine

    def service(self, name):
        return self._engine.services[name]


def _ctx(engine):
    return _Ctx(engine)


def _load_clip(engine, name, type_):
    from nodegraph_nodes.dit.llm_loading import load_text_encoder

    root = Path(engine.paths.models_dir)
    return load_text_encoder(root / "text_encoders" / name, type_, _ctx(engine).service("models"), "cpu", root)


def test_file_without_untied_head_is_refused(engine):
    # the tiny Qwen2.5-VL is 128 wide; a head-less file of a width whose release does not tie is refused
    old = tg.TIED_UP_TO["qwen25vl"]
    tg.TIED_UP_TO["qwen25vl"] = 64
    try:
        result, _ = _run(engine, "tiny_qwen_2.5_vl_nohead.safetensors", "qwen_image", prompt=PROMPT, max_length=4,
                         sampling_mode="off")
    finally:
        tg.TIED_UP_TO["qwen25vl"] = old
    assert result.failure is not None
    message = str(result.failure)
    assert "TextGenerate.clip" in message and "lm_head" in message


def test_bad_inputs_name_the_input(engine, te_root):
    result, _ = _run(engine, "tiny_qwen_3.safetensors", "lumina2", prompt="", max_length=4, sampling_mode="off",
                     use_default_template=False)
    assert "TextGenerate.prompt" in str(result.failure)
    g = Graph()
    ckpt_clip = g.node("CLIPLoader", clip_name="tiny_qwen_3.safetensors", type="lumina2")
    node = g.node("TextGenerate", clip=ckpt_clip, prompt=PROMPT, max_length=4, sampling_mode="maybe")
    g.node("PreviewAny", source=node[0])
    with pytest.raises(ValidationFailed, match="sampling_mode"):
        engine.run(g)
    with pytest.raises(tg.GenerationError, match="TextGenerate.clip"):
        tg.clip_kind(object())
    with pytest.raises(tg.GenerationError, match="TextGenerate.image"):
        tg.generate_text(_ctx(engine), _load_clip(engine, "tiny_qwen_3.safetensors", "lumina2"), PROMPT,
                         max_length=2, settings=dict(tg.OFF_DEFAULTS, do_sample=False),
                         image=torch.zeros(1, 28, 28, 3))


def test_sampler_rule():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])
    off = dict(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
               presence_penalty=0.0)
    assert tg.next_token(logits, [], **off, generator=None) == 4
    # greedy ignores penalties
    assert tg.next_token(logits, [4], **{**off, "repetition_penalty": 5.0}, generator=None) == 4
    on = dict(off, do_sample=True)
    # top_k=1 always picks the best; a strong repetition penalty on it moves the choice to the runner-up
    assert all(tg.next_token(logits, [], **{**on, "top_k": 1}, generator=None) == 4 for _ in range(3))
    assert tg.next_token(logits, [4], **{**on, "top_k": 1, "repetition_penalty": 2.0}, generator=None) == 0
    assert tg.next_token(logits, [4], **{**on, "top_k": 1, "presence_penalty": 1.5}, generator=None) == 0
    # min_p keeps only tokens within min_p of the best one's probability: 3.0 and 2.0 (e^-1 = 0.37 > 0.3)
    picks = {tg.next_token(logits, [], **{**on, "min_p": 0.3}, generator=torch.Generator().manual_seed(s))
             for s in range(40)}
    assert picks == {0, 4}
    # top_p: the smallest prefix whose cumulative probability exceeds top_p
    picks = {tg.next_token(logits, [], **{**on, "top_p": 0.5}, generator=torch.Generator().manual_seed(s))
             for s in range(40)}
    assert picks == {4}
    # top_k draws among the k best with the generator: same seed, same token
    a = tg.next_token(logits, [], **{**on, "top_k": 3}, generator=torch.Generator().manual_seed(5))
    b = tg.next_token(logits, [], **{**on, "top_k": 3}, generator=torch.Generator().manual_seed(5))
    assert a == b and a in (0, 1, 4)


def test_split_thinking():
    assert tg.split_thinking("<think>\nplan\n</think>\n\nanswer", "x") == ("answer", "plan")
    assert tg.split_thinking("answer only", "x") == ("answer only", "")
    assert tg.split_thinking("plan</think>answer", "raw <think>") == ("answer", "plan")
    assert tg.split_thinking("no close</think>x", "p") == ("no close</think>x", "")


@pytest.mark.parametrize("values, expect", [
    # 9 entries: the first release (no presence_penalty / thinking)
    (["hi", 2048, "on", 0.7, 64, 0.95, 0.05, 1.05, 3],
     {"prompt": "hi", "max_length": 2048, "sampling_mode": "on", "sampling_mode.seed": 3, "thinking": False}),
    # 13 entries: today's (presence_penalty, thinking, use_default_template, mtp)
    (["", 3584, "on", 1, 1, 0.95, 0, 1.05, 0, 1.5, True, False, "off"],
     {"sampling_mode.top_k": 1, "sampling_mode.presence_penalty": 1.5, "thinking": True,
      "use_default_template": False, "mtp": "off"}),
    # sampling off: its fields are not stored
    (["", 256, "off", True, True, "auto"], {"sampling_mode": "off", "thinking": True, "mtp": "auto"}),
])
def test_template_widget_layouts(values, expect):
    got = map_widget_values(tg.TextGenerate, values)
    for k, v in expect.items():
        assert got[k] == v, (k, got)


# -- Gemma 2 (Lumina 2's CLIP) and Gemma 3 (LTX-2's CLIP: the model holds it as .gemma) -------------------

GEMMA_SPECIALS = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<image_soft_token>"]


def _gemma_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=GEMMA_SPECIALS)
    tok.train_from_iterator([PROMPT, "user\n", "model\n", "User Raw Input Prompt:", tg.LTX2_T2V_SYSTEM] * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   additional_special_tokens=GEMMA_SPECIALS[3:])
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


class _Stack(torch.nn.Module):
    """The shape of LTX-2's text stack: the language model as ``.gemma`` (connectors left out)."""

    def __init__(self, gemma):
        super().__init__()
        self.gemma = gemma


def _gemma_models(kind: str, tok):
    from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma2Model, Gemma3ForCausalLM, Gemma3TextConfig,
                              Gemma3TextModel)

    torch.manual_seed(5)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    if kind == "gemma2":
        cfg, base_cls, lm_cls = Gemma2Config(**common, sliding_window=16), Gemma2Model, Gemma2ForCausalLM
    else:
        cfg, base_cls, lm_cls = Gemma3TextConfig(**common, sliding_window=16), Gemma3TextModel, Gemma3ForCausalLM
    base = base_cls(cfg).eval()
    for p in base.parameters():
        p.data.normal_(0, 0.1)
    lm = lm_cls(cfg).eval()
    lm.model.load_state_dict(base.state_dict())
    lm.lm_head.weight = lm.model.embed_tokens.weight
    return base, lm


def _gemma_reference(lm, tok, text: str, max_new: int) -> str:
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    stops = [tok.convert_tokens_to_ids("<eos>"), tok.convert_tokens_to_ids("<end_of_turn>")]
    with torch.inference_mode():
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                          eos_token_id=stops, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()


def test_gemma2_lumina2_clip_greedy_equals_transformers(engine, tmp_path):
    from nodegraph_nodes.dit.lumina2 import Lumina2Clip

    tok = _gemma_tokenizer(tmp_path / "gemma_tok")
    base, lm = _gemma_models("gemma2", tok)
    handle = engine.services["models"].load(("textgen-test", "gemma2"), lambda: base)
    clip = Lumina2Clip(handle, tok)
    node = tg.TextGenerate(_ctx(engine))
    text, thinking = node.execute(clip, PROMPT, 12, "off", system_prompt="be brief")
    assert text == _gemma_reference(lm, tok, f"<start_of_turn>user\nbe brief\n\n{PROMPT}<end_of_turn>\n"
                                             "<start_of_turn>model\n", 12)
    assert len(text) > 0 and thinking == ""


def test_ltx2_prompt_on_gemma3_equals_transformers(engine, tmp_path):
    from dataclasses import dataclass

    tok = _gemma_tokenizer(tmp_path / "gemma3_tok")
    base, lm = _gemma_models("gemma3", tok)
    handle = engine.services["models"].load(("textgen-test", "gemma3"), lambda: _Stack(base))

    @dataclass(frozen=True, eq=False)
    class Ltx2LikeClip:
        handle: object
        tokenizer: object
        source: str = ""
        family: str = "ltx2"

        def describe(self):
            return "ltx2 text encoder (Gemma 3 + connectors)"

    clip = Ltx2LikeClip(handle, tok)
    node = tg.TextGenerateLTX2Prompt(_ctx(engine))
    text, _ = node.execute(clip, PROMPT, 12, "off")
    formatted = tg.ltx2_prompt(PROMPT)
    assert formatted.startswith("<start_of_turn>system\n") and "User Raw Input Prompt: a red fox in snow." in formatted
    expected = _gemma_reference(lm, tok, formatted, 12)
    assert text == expected and len(text) > 0
    with pytest.raises(tg.GenerationError, match="TextGenerateLTX2Prompt.image"):
        node.execute(clip, PROMPT, 4, "off", image=torch.zeros(1, 16, 16, 3))
    with pytest.raises(tg.GenerationError, match="TextGenerateLTX2Prompt.clip"):
        node.execute(object(), PROMPT, 4, "off")


def test_ltx2_prompt_gives_back_the_prompt_when_the_answer_is_empty(monkeypatch, engine):
    monkeypatch.setattr(tg, "generate_text", lambda *a, **k: "  ")
    assert tg.TextGenerateLTX2Prompt(_ctx(engine)).execute(object(), PROMPT, 4, "off") == (PROMPT, "")


def test_llm_qwen3_text_gen_template_runs(engine, te_root):
    """The package's llm_qwen3_text_gen template (CLIPLoader qwen_3_4b.safetensors with type ``ltxv``, which
    ComfyUI loads as the Z-Image Qwen3 encoder; TextGenerate with sampling on; PreviewAny) runs end to end on
    the tiny Qwen3 file under its name; only max_length is made 16."""
    api, nid, node = text_gen_template(te_root["root"], "llm_qwen3_text_gen", "tiny_qwen_3.safetensors",
                                       "qwen_3_4b.safetensors")
    assert node["inputs"]["sampling_mode"] == "on" and node["inputs"]["sampling_mode.top_k"] == 64
    assert node["inputs"]["sampling_mode.seed"] == 0 and node["inputs"]["max_length"] == 2048
    loader = api[node["inputs"]["clip"][0]]
    assert loader["class_type"] == "CLIPLoader" and loader["inputs"]["type"] == "ltxv"
    assert len(run_text_gen_template(engine, api, nid)) > 0


def text_gen_template(root: Path, template: str, tiny_file: str, as_name: str) -> tuple[dict, str, dict]:
    """The installed package's TextGenerate ``template`` (skipped when absent) with the tiny text encoder
    ``tiny_file`` copied to the template's ``as_name`` under ``root``'s models; its API prompt and its
    TextGenerate node (id, node)."""
    import json
    import shutil

    from nodegraph.workflow.loader import load_workflow_data

    from tests.helpers.package_templates import package_templates

    paths = package_templates(lambda name: name == f"{template}.json")
    if not paths:
        pytest.skip(f"the template package has no {template}")
    te = root / "models" / "text_encoders"
    shutil.copyfile(te / tiny_file, te / as_name)
    api = load_workflow_data(json.loads(paths[0].read_text()), default_registry(packs=False)).api
    (nid, node), = [(k, n) for k, n in api.items() if n["class_type"] == "TextGenerate"]
    return api, nid, node


def run_text_gen_template(engine, api: dict, nid: str) -> str:
    """``api`` run with TextGenerate ``nid``'s max_length made 16: its text, which the template's PreviewAny shows."""
    api[nid]["inputs"]["max_length"] = 16
    result = engine.run(api).raise_for_status()
    text = result.value(nid, 0)
    assert isinstance(text, str)
    (preview,) = [k for k, n in api.items() if n["class_type"] == "PreviewAny"]
    assert result.outputs[preview]["text"] == [text]  # what the template shows
    return text


def test_qwen3_file_under_a_newer_family_type_is_refused(engine):
    result, _ = _run(engine, "tiny_qwen_3.safetensors", "krea2", prompt=PROMPT, max_length=4, sampling_mode="off")
    assert "CLIPLoader.type: 'krea2' is not supported yet" in str(result.failure)


def test_untied_file_head_is_used(engine, te_root, monkeypatch):
    """A Qwen3 file of a width whose release does not tie (8B) with its own lm_head.weight: that head is
    the output projection (transformers' untied Qwen3ForCausalLM)."""
    from transformers import Qwen3ForCausalLM

    base, tok = te_root["qwen3"], te_root["qwen3_tok"]
    head = torch.randn(base.config.vocab_size, base.config.hidden_size, generator=torch.Generator().manual_seed(9))
    te = te_root["root"] / "models" / "text_encoders"
    sd = {"model." + k: v.contiguous() for k, v in base.state_dict().items()}
    save_file({**sd, "lm_head.weight": head}, str(te / "tiny_qwen_3_head.safetensors"))
    tied, _ = _text(engine, "tiny_qwen_3.safetensors", "lumina2", prompt=PROMPT, max_length=16, sampling_mode="off")
    monkeypatch.setitem(tg.TIED_UP_TO, "qwen3", 16)
    text, _ = _text(engine, "tiny_qwen_3_head.safetensors", "lumina2", prompt=PROMPT, max_length=16,
                    sampling_mode="off")
    cfg = base.config.__class__.from_dict({**base.config.to_dict(), "tie_word_embeddings": False})
    lm = Qwen3ForCausalLM(cfg).eval()
    lm.model.load_state_dict(base.state_dict())
    lm.lm_head.weight.data.copy_(head)
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False)
    assert text == _reference(lm, tok, chat, 16) and text != tied
    save_file(sd, str(te / "tiny_qwen_3_nohead.safetensors"))
    result, _ = _run(engine, "tiny_qwen_3_nohead.safetensors", "lumina2", prompt=PROMPT, max_length=4,
                     sampling_mode="off")
    assert "lm_head" in str(result.failure) and "TextGenerate.clip" in str(result.failure)


def test_qwen25vl_seeded_sampling_equals_transformers_generate(engine, te_root):
    model, tok = te_root["qwen25"], te_root["qwen25_tok"]
    chat = f"<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_2.5_vl.safetensors", type="qwen_image")
    system = g.node("PrimitiveString", value="be brief")
    node = g.node("TextGenerate", clip=clip, prompt=PROMPT, max_length=20, sampling_mode="on", system_prompt=system[0],
                  **{"sampling_mode.temperature": 0.9, "sampling_mode.top_k": 0, "sampling_mode.top_p": 0.85,
                     "sampling_mode.min_p": 0.0, "sampling_mode.repetition_penalty": 1.0, "sampling_mode.seed": 3})
    g.node("PreviewAny", source=node[0])
    text = engine.run(g).raise_for_status().value(node.id, 0)
    assert text == _reference(model, tok, chat, 20, seed=3, temperature=0.9, top_k=0, top_p=0.85) and len(text) > 0
