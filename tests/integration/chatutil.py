"""Helpers for the chat template tests: run build/engram-chatrender and the
reference (transformers' own jinja2 environment and render function)."""
import json
import os
import subprocess
import tempfile

SRC = os.environ.get("ENGRAM_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("ENGRAM_BUILD_DIR", os.path.join(SRC, "build"))
BIN = os.path.join(BUILD, "engram-chatrender")
FIXTURES = os.path.join(SRC, "tests", "fixtures", "tokenizers")
SPECIAL = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]


def special_tokens(cfg):
    """transformers' special_tokens_map for a tokenizer_config.json (set tokens only)."""
    kw = {}
    for k in SPECIAL:
        v = cfg.get(k)
        if isinstance(v, dict):
            v = v.get("content")
        if v is not None:
            kw[k] = v
    if cfg.get("additional_special_tokens"):
        kw["additional_special_tokens"] = [
            t["content"] if isinstance(t, dict) else t for t in cfg["additional_special_tokens"]]
    return kw


def ref_dir(model_dir, messages, tools=None, add_generation_prompt=False, extra=None):
    """Renders like tokenizer.apply_chat_template(tokenize=False). Returns (ok, text or error)."""
    from transformers.utils.chat_template_utils import render_jinja_template
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    kw = special_tokens(cfg)
    kw.update(extra or {})
    try:
        out, _ = render_jinja_template([messages], tools=tools, chat_template=cfg["chat_template"],
                                       add_generation_prompt=add_generation_prompt, **kw)
        return True, out[0]
    except Exception as e:  # noqa: BLE001 - any template error counts as an error
        return False, f"{type(e).__name__}: {e}"


def ref_template(template, messages, add_generation_prompt=False, bos="", eos="", extra=None, tools=None):
    """Renders a raw template with transformers' jinja2 environment."""
    from transformers.utils.chat_template_utils import _compile_jinja_template
    try:
        t = _compile_jinja_template(template)
        return True, t.render(messages=messages, tools=tools, documents=None,
                              add_generation_prompt=add_generation_prompt,
                              bos_token=bos, eos_token=eos, **(extra or {}))
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"


def run_ours(messages=None, *, model_dir=None, template=None, tools=None, add_generation_prompt=False,
             extra=None, bos=None, eos=None, messages_raw=None, tools_raw=None, timeout=60):
    """Runs engram-chatrender. Returns (returncode, stdout str, stderr str)."""
    with tempfile.TemporaryDirectory() as d:
        def put(name, data, raw=False):
            p = os.path.join(d, name)
            mode = "wb" if isinstance(data, bytes) else "w"
            with open(p, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(data if raw or isinstance(data, bytes) else json.dumps(data, ensure_ascii=False))
            return p
        cmd = [BIN]
        if model_dir is not None:
            cmd += ["--template-dir", model_dir]
        else:
            cmd += ["--template", put("t.jinja", template.encode("utf-8") if isinstance(template, str) else template)]
        if bos is not None:
            cmd += ["--bos", bos]
        if eos is not None:
            cmd += ["--eos", eos]
        cmd += ["--messages", put("m.json", messages_raw, raw=True) if messages_raw is not None else put("m.json", messages)]
        if tools_raw is not None:
            cmd += ["--tools", put("tools.json", tools_raw, raw=True)]
        elif tools is not None:
            cmd += ["--tools", put("tools.json", tools)]
        if extra is not None:
            cmd += ["--extra", put("x.json", extra)]
        if add_generation_prompt:
            cmd.append("--add-generation-prompt")
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "surrogateescape"), p.stderr.decode("utf-8", "replace")
