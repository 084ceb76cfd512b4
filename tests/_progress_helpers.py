"""Reading the progress bars a run drew on stderr (tqdm off a terminal: one line per refresh)."""

import re

_BAR = re.compile(r"^(?P<desc>.*?):\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+) \[(?P<stats>.*)\]$")


def bar_lines(err: str) -> list[dict]:
    """Every bar refresh in ``err``: its description, count, total and postfix."""
    out = []
    for line in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", err)):  # bars below the first move the cursor
        m = _BAR.match(line.strip())
        if m:
            postfix = ", ".join(m["stats"].split(", ")[2:])  # after the times and the rate
            out.append({"desc": m["desc"], "n": int(m["n"]), "total": int(m["total"]), "postfix": postfix})
    return out


def opened(lines: list[dict]) -> int:
    """How many bars were opened (each first draws a count of 0; one bar's count never goes back)."""
    return sum(1 for a, b in zip([None] + lines, lines) if b["n"] == 0 or (a is not None and b["n"] < a["n"]))
