"""The categories report as plain text: both matrices, harmless refusal, broken shares and
KL per row, and each category's selectivity against the goal."""

from __future__ import annotations

from refusal_core.categories.conditions import GOAL

__all__ = ["format_report"]


def _short(category: str) -> str:
    return category[:6]


def _matrix_lines(title: str, block: dict, categories: list[str]) -> list[str]:
    head = (
        f"{'off / measured':16s}"
        + "".join(f"{_short(c):>7s}" for c in categories)
        + f"{'harmls':>7s}{'KL':>7s}{'brk-hf':>7s}{'brk-hl':>7s}"
    )
    lines = ["", title, head]
    for i, (category, row, harmless, kl) in enumerate(zip(categories, block["matrix"], block["harmless"], block["kl"])):
        lines.append(
            f"{category[:16]:16s}"
            + "".join(f"{value:7.0%}" for value in row)
            + f"{harmless:7.0%}{kl:7.3f}"
            + _broken(block, "broken_harmful", i)
            + _broken(block, "broken_harmless", i)
        )
    lines += ["", f"{'category':22s} {'own':>5s} {'others mean':>11s} {'others min':>10s} {'harmless':>8s}  goal"]
    for category, s in zip(categories, block["selectivity"]):
        lines.append(
            f"{category:22s} {s['own']:5.0%} {s['others_mean']:11.0%} {s['others_min']:10.0%} {s['harmless']:8.0%}  "
            + ("MET" if s["meets_goal"] else "missed")
        )
    met = [c for c, s in zip(categories, block["selectivity"]) if s["meets_goal"]]
    lines.append(f"goal met for {len(met)} of {len(categories)} categories" + (f": {', '.join(met)}" if met else ""))
    return lines


def _broken(block: dict, key: str, i: int | None = None) -> str:
    value = block.get(key)
    value = value[i] if isinstance(value, list) else value
    return f"{'-':>7s}" if value is None else f"{value:7.0%}"


def _line(name: str, summary: dict, categories: list[str]) -> str:
    kl = f", KL {summary['kl']:.3f}" if "kl" in summary else ""
    return (
        f"{name}: "
        + ", ".join(f"{_short(c)} {v:.0%}" for c, v in zip(categories, summary["by_category"]))
        + f"; harmless {summary['harmless']:.0%}{kl}"
        + (
            ""
            if summary["broken_harmful"] is None
            else f"; broken: harmful {summary['broken_harmful']:.0%}, harmless {summary['broken_harmless']:.0%}"
        )
    )


def format_report(report: dict) -> str:
    categories = report["categories"]
    n = report["n_test"]
    lines = [
        f"Model {report['model']}; category directions at layer {report['layer']}, conditions at layer {report['condition_layer']}",
        f"Test prompts: {n['per_category']} per category ({n['harmful']} harmful), {n['harmless']} harmless; "
        f"{report['max_new_tokens']}-token greedy replies, {report['judge']} judge",
        f"Goal per category: own refusal <= {GOAL['own']:.0%}, every other >= {GOAL['others']:.0%}, harmless <= {GOAL['harmless']:.0%}",
        "",
        _line("baseline refusal", report["baseline"], categories),
        _line("shared direction ablated", report["shared"], categories),
        "(brk-hf, brk-hl: shares of broken replies to the harmful and the harmless test prompts; "
        "refused shares count fluent refusals only)",
    ]
    lines += _matrix_lines(
        f"Ablation of each category's {report['part']} direction (rows) at every layer, refusal per category (columns)",
        report["ablation"],
        categories,
    )
    conditional = report["conditional"]
    lines += _matrix_lines(
        "Conditional ablation: the shared direction ablated on prompts that fire the row category's condition",
        conditional,
        categories,
    )
    if "conditions" in report:
        chosen = report["conditions"]
        tried = len(chosen["scan"])
        lines.append(
            f"conditions: {chosen['kind']} at layer {chosen['layer']}, shrinkage {chosen['shrinkage']:g}"
            + (f", margin {chosen['margin']:g}" if chosen["margin"] is not None else "")
            + (f" (chosen on val from {tried} settings)" if tried > 1 else "")
            + f"; val goal met for {len(chosen['val_goal'])}: {', '.join(chosen['val_goal']) or 'none'}"
        )
    lines.append(
        "condition val balanced accuracy: "
        + ", ".join(f"{_short(c)} {v:.2f}" for c, v in zip(categories, conditional["val_accuracy"]))
    )
    if "fired_own" in conditional:
        lines.append(
            "condition fires on test: own prompts "
            + ", ".join(f"{_short(c)} {v:.0%}" for c, v in zip(categories, conditional["fired_own"]))
            + "; harmless "
            + ", ".join(f"{_short(c)} {v:.0%}" for c, v in zip(categories, conditional["fired_harmless"]))
        )
    lines.append(f"\n({report['seconds']} s)")
    return "\n".join(lines)
