"""The report's section for a plan search's Result (``parasim search``): what was considered and
pruned, the simulated plans ranked with the winner marked, and why each beats the next (the
sentences the search wrote into the Result)."""

from __future__ import annotations

from typing import Any

from reports.html import esc, table


def search_section(results: list[dict[str, Any]]) -> str | None:
    found = [r for r in results if isinstance(r.get("search"), dict)]
    if not found:
        return None
    parts = []
    for r in found:
        s = r["search"]
        name = (r.get("scenario") or {}).get("name") or "unnamed scenario"
        counts = ", ".join(f"{_int(s.get(k))} {what}" for k, what in (
            ("considered", "candidates considered"), ("pruned_by_rule", "pruned by rule"),
            ("pruned_by_memory", "pruned by memory"), ("simulated", "simulated")))
        parts.append(f"<h3>{esc(name)}</h3><p class=lead>{counts}, ranked by simulated "
                     "throughput; the estimate is the closed form that chose them for "
                     "simulation.</p>")
        rows = []
        for i, e in enumerate(r.get("results") or [], 1):
            if not isinstance(e, dict):
                continue
            est = e.get("estimate")
            est = est.get("iteration_time_s") if isinstance(est, dict) else None
            tag = ' <span class="tag winner">winner</span>' if i == 1 else ""
            rows.append([str(i), esc(e.get("strategy")) + tag, esc(e.get("devices")),
                         _fmt(e.get("throughput_samples_per_s"), "{:,.1f}"),
                         _fmt(_ms(e.get("iteration_time_s")), "{:,.3f}"),
                         _fmt(_ms(est), "{:,.3f}")])
        parts.append(table(["rank", "plan", "devices", "throughput<br>(samples/s)",
                            "iteration<br>time (ms)", "estimate<br>(ms)"], rows,
                           numeric={0, 2, 3, 4, 5}, css="search"))
        why = [w for w in s.get("why") or [] if isinstance(w, str)] \
            if isinstance(s.get("why"), list) else []
        if why:
            parts.append("<ul class=why>" + "".join(f"<li>{esc(w)}</li>" for w in why)
                         + "</ul>")
    return "".join(parts)


def _ms(x: object) -> float | None:
    return x * 1e3 if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _fmt(x: object, form: str) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or x != x:
        return "–"
    return form.format(x)


def _int(x: object) -> str:
    return str(x) if isinstance(x, int) and not isinstance(x, bool) else "?"
