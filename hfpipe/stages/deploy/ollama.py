"""An Ollama ``Modelfile`` for the GGUF export, whose ``TEMPLATE`` (a Go text/template) renders conversations byte for
byte as the model's Jinja chat template does.

Ollama does not run Jinja: it renders the Modelfile's Go template over ``.Messages``. The translation is measured, not
assumed: the Jinja template is rendered on probe conversations whose contents are sentinels, which gives per role the
text around a message's content, the default system turn some templates insert (SmolLM2's) and the generation
prompt. From those pieces ``go_template`` writes the Go template; ``render_go`` renders that subset of Go's
text/template (range over .Messages, if / else if with eq, ne, and; field access; string literals), and the deploy
stage checks the two renderings agree on real conversations before the Modelfile is written. A template whose
rendering does not decompose into per-message pieces (one that reorders or rewrites messages) gets no Modelfile: one
error line says so.
"""

from __future__ import annotations

import re

from hfpipe.errors import HfpipeError

ROLES = ("system", "user", "assistant")
_S = ("\x00SENTINEL-A\x00", "\x00SENTINEL-B\x00", "\x00SENTINEL-C\x00")
PROBE_CHATS = (
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And of Italy?\nAnswer in one word."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello.\n"}, {"role": "user", "content": "  spaces {{ braces }} \t"}],
)


def _render(tokenizer, messages, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _literal(text: str) -> str:
    """Text for a Go template: ``{{`` cannot appear literally."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(tokenizer) -> str:
    """The Go template (Ollama TEMPLATE) equivalent to ``tokenizer.chat_template``; HfpipeError when the Jinja
    template is not of the per-message kind."""

    def fail(why: str):
        raise HfpipeError(f"deploy: the chat template cannot be written as an Ollama Modelfile TEMPLATE ({why}); "
                          "use a per-message template (ChatML, hfpipe's default) or set deploy.gguf: []", 1)

    sys_msg = {"role": "system", "content": _S[0]}
    base = _render(tokenizer, [sys_msg], False)
    if _S[0] not in base:
        fail("a system message's content does not appear in its rendering")
    pre, suf = {}, {}
    pre["system"], suf["system"] = base.split(_S[0], 1)
    for role, s in (("user", _S[1]), ("assistant", _S[2])):
        text = _render(tokenizer, [sys_msg, {"role": role, "content": s}], False)
        if not text.startswith(base) or s not in text:
            fail(f"a {role} turn is not appended after the system turn")
        pre[role], suf[role] = text[len(base):].split(s, 1)
    first_user = _render(tokenizer, [{"role": "user", "content": _S[1]}], False)
    if not first_user.endswith(pre["user"] + _S[1] + suf["user"]):
        fail("a lone user turn renders differently from one after a system turn")
    default_system = first_user[: -len(pre["user"] + _S[1] + suf["user"])]
    no_gen = _render(tokenizer, [sys_msg, {"role": "user", "content": _S[1]}], False)
    with_gen = _render(tokenizer, [sys_msg, {"role": "user", "content": _S[1]}], True)
    if not with_gen.startswith(no_gen):
        fail("the generation prompt is not appended at the end")
    gen = with_gen[len(no_gen):]
    out = "{{ range $i, $m := .Messages }}"
    if default_system:
        out += '{{ if and (eq $i 0) (ne $m.Role "system") }}' + _literal(default_system) + "{{ end }}"
    for k, role in enumerate(ROLES):
        out += ("{{ if" if k == 0 else "{{ else if") + f' eq $m.Role "{role}" }}}}'
        out += _literal(pre[role]) + "{{ $m.Content }}" + _literal(suf[role])
    out += "{{ end }}{{ end }}" + _literal(gen)
    return out


def modelfile(gguf_name: str, template: str, stops: list[str], sha256: str | None) -> str:
    """The Modelfile text: FROM the GGUF beside it, the TEMPLATE, one PARAMETER stop per end-of-turn token."""
    if '"""' in template:
        raise HfpipeError('deploy: the Ollama TEMPLATE would contain """, which a Modelfile cannot quote', 1)
    lines = ["# Ollama: `ollama create <name> -f Modelfile` in this folder, then `ollama run <name>`",
             f"# TEMPLATE renders the chat template of the tokenizer stage (sha256 {sha256}) byte for byte",
             f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE and the stop parameters of a Modelfile written by ``modelfile``."""
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1), "template": m.group(1) if m else None,
            "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)}


# ----------------------------------------------------------------------------------------------------------------------
# The Go text/template subset the generated TEMPLATE uses, rendered in Python

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def _parse(template: str):
    """[(kind, payload)] with kind in text / action."""
    out, pos = [], 0
    for m in _ACTION.finditer(template):
        if m.start() > pos:
            out.append(("text", template[pos:m.start()]))
        out.append(("action", m.group(1).strip()))
        pos = m.end()
    if pos < len(template):
        out.append(("text", template[pos:]))
    return out


def _args(expr: str) -> list[str]:
    return re.findall(r'\((?:[^()]|\([^()]*\))*\)|"(?:[^"\\]|\\.)*"|\S+', expr)


def _value(tok: str, scope: dict):
    if tok.startswith("("):
        return _eval(tok[1:-1].strip(), scope)
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape") if "\\" in tok else tok[1:-1]
    if tok.lstrip("-").isdigit():
        return int(tok)
    if tok.startswith("$"):
        name, _, field = tok.partition(".")
        v = scope[name]
        for f in filter(None, field.split(".")):
            v = v[f] if isinstance(v, dict) else getattr(v, f)
        return v
    if tok.startswith("."):
        v = scope["."]
        for f in filter(None, tok.split(".")):
            v = v[f]
        return v
    raise HfpipeError(f"go template: cannot evaluate '{tok}'", 1)


def _eval(expr: str, scope: dict):
    a = _args(expr)
    fn = a[0]
    if fn == "eq":
        return _value(a[1], scope) == _value(a[2], scope)
    if fn == "ne":
        return _value(a[1], scope) != _value(a[2], scope)
    if fn == "and":
        return all(_value(x, scope) for x in a[1:])
    if fn == "or":
        return any(_value(x, scope) for x in a[1:])
    if fn == "not":
        return not _value(a[1], scope)
    if len(a) == 1:
        return _value(fn, scope)
    raise HfpipeError(f"go template: unsupported expression '{expr}'", 1)


def _block(nodes, i: int, scope: dict, out: list[str], run: bool) -> tuple[int, str]:
    """Render nodes from i until an unmatched end/else; returns (index of that node, its action)."""
    while i < len(nodes):
        kind, p = nodes[i]
        if kind == "text":
            if run:
                out.append(p)
            i += 1
            continue
        if p == "end" or p == "else" or p.startswith("else if "):
            return i, p
        if p.startswith("if "):
            cond, taken = p[3:], False
            i += 1
            while True:  # if / else if ... / else / end: the first true branch renders
                ok = run and not taken and (cond is None or bool(_eval(cond, scope)))
                i, stop = _block(nodes, i, scope, out, ok)
                taken, i = taken or ok, i + 1
                if stop == "end":
                    break
                cond = stop[len("else if "):] if stop.startswith("else if ") else None
        elif p.startswith("range "):
            m = re.fullmatch(r"range\s+(?:(\$\w+)\s*,\s*(\$\w+)\s*:=\s*)?(.+)", p)
            items = _value(m.group(3).strip(), scope) if run else []
            start = i + 1
            end = None
            for k, item in enumerate(items or []):
                inner = {**scope, ".": item, m.group(1) or "$_i": k, m.group(2) or "$_v": item}
                end, _ = _block(nodes, start, inner, out, True)
            if end is None:
                end, _ = _block(nodes, start, scope, [], False)
            i = end + 1
        else:
            if run:
                out.append(str(_value(p, scope) if " " not in p else _eval(p, scope)))
            i += 1
    return i, ""


def render_go(template: str, messages: list[dict]) -> str:
    """Render a Go template of the subset above over ``.Messages`` (each {"Role", "Content"}), as Ollama does."""
    nodes = _parse(template)
    scope = {".": {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}}
    scope["$"] = scope["."]
    out: list[str] = []
    i, stop = _block(nodes, 0, scope, out, True)
    if stop:
        raise HfpipeError(f"go template: unexpected {{{{ {stop} }}}}", 1)
    return "".join(out)


def check_translation(tokenizer, go: str) -> None:
    """The Go template renders every probe conversation exactly as the Jinja template (with the generation prompt)."""
    for chat in PROBE_CHATS:
        want, got = _render(tokenizer, chat, True), render_go(go, chat)
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            raise HfpipeError(f"deploy: the Modelfile TEMPLATE renders a conversation differently from the chat "
                              f"template at character {at} ({want[at:at + 20]!r} vs {got[at:at + 20]!r})", 1)
