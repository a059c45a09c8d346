"""`hfpipe inspect RECIPE tokens`: text cut into a tokenizer's tokens, for a person to look at."""

from __future__ import annotations


def token_boundaries(tokenizer, text: str, max_chars: int = 400, color: bool = False,
                     width: int = 100) -> tuple[str, list[str]]:
    """(a summary, lines of the start of ``text`` with each token's span marked): ``|`` between tokens, or
    alternating background colours (a terminal); lines end where the text does (``⏎``) or before ``width``. Spans come
    from the tokenizer's offsets, so each piece is the original text; the bytes of one character split over several
    tokens show once, on the first."""
    cut = text[:max_chars]
    if len(text) > max_chars and "\n" in cut[max_chars // 2:]:
        cut = cut[: cut.rfind("\n")]
    enc = tokenizer(cut, add_special_tokens=False, return_offsets_mapping=True)
    pieces, end = [], 0
    for start, stop in enc["offset_mapping"]:
        start = max(start, end)
        if stop > start:
            pieces.append(cut[start:stop])
            end = stop
    shades = ("\x1b[48;5;153m\x1b[30m", "\x1b[48;5;223m\x1b[30m")
    lines: list[str] = []
    line, shown = None, 0  # None: nothing on the line yet
    for i, piece in enumerate(pieces):
        for k, part in enumerate(piece.replace("\n", "⏎\n").split("\n")):
            if k:  # the piece went on past a line break
                lines.append(line or "")
                line, shown = None, 0
            if not part:
                continue
            if line is not None and shown + len(part) > width:
                lines.append(line)
                line, shown = None, 0
            marked = f"{shades[i % 2]}{part}\x1b[0m" if color else part
            sep = "" if color or line is None or k else "|"
            line, shown = (line or "") + sep + marked, shown + len(sep) + len(part)
    if line is not None:
        lines.append(line)
    n = len(enc["input_ids"])
    head = f"{len(cut):,} characters -> {n:,} tokens ({len(cut) / max(n, 1):.2f} characters/token)"
    return head, [f"    {line}" for line in lines]
