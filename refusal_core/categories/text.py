"""The categories report as plain text: both matrices, harmless refusal and KL per row,
and each category's selectivity against the goal."""

from __future__ import annotations

from refusal_core.categories.matrix import GOAL

__all__ = ["format_report"]


def _short(category: str) -> str:
    return category[:6]


def _matrix_lines(title: str, block: dict, categories: list[str]) -> list[str]:
    head = f"{'off / measured':16s}" + "".join(f"{_short(c):>7s}" for c in categories) + f"{'harmls':>7s}{'KL':>7s}"
    lines = ["", title, head]
    for category, row, harmless, kl in zip(categories, block["matrix"], block["harmless"], block["kl"]):
        lines.append(f"{category[:16]:16s}" + "".join(f"{value:7.0%}" for value in row) + f"{harmless:7.0%}{kl:7.3f}")
    lines += ["", f"{'category':22s} {'own':>5s} {'others mean':>11s} {'others min':>10s} {'harmless':>8s}  goal"]
    for category, s in zip(categories, block["selectivity"]):
        lines.append(f"{category:22s} {s['own']:5.0%} {s['others_mean']:11.0%} {s['others_min']:10.0%} {s['harmless']:8.0%}  "
                     + ("MET" if s["meets_goal"] else "missed"))
    met = [c for c, s in zip(categories, block["selectivity"]) if s["meets_goal"]]
    lines.append(f"goal met for {len(met)} of {len(categories)} categories" + (f": {', '.join(met)}" if met else ""))
    return lines


def format_report(report: dict) -> str:
    categories = report["categories"]
    n = report["n_test"]
    lines = [
        f"Model {report['model']}; category directions at layer {report['layer']}, conditions at layer {report['condition_layer']}",
        f"Test prompts: {n['per_category']} per category ({n['harmful']} harmful), {n['harmless']} harmless; "
        f"{report['max_new_tokens']}-token greedy replies, {report['judge']} judge",
        f"Goal per category: own refusal <= {GOAL['own']:.0%}, every other >= {GOAL['others']:.0%}, harmless <= {GOAL['harmless']:.0%}",
        "",
        "baseline refusal: " + ", ".join(f"{_short(c)} {v:.0%}" for c, v in zip(categories, report["baseline"]["by_category"]))
        + f"; harmless {report['baseline']['harmless']:.0%}",
        "shared direction ablated: " + ", ".join(f"{_short(c)} {v:.0%}" for c, v in zip(categories, report["shared"]["by_category"]))
        + f"; harmless {report['shared']['harmless']:.0%}, KL {report['shared']['kl']:.3f}",
    ]
    lines += _matrix_lines(f"Ablation of each category's {report['part']} direction (rows) at every layer, refusal per category (columns)",
                           report["ablation"], categories)
    conditional = report["conditional"]
    lines += _matrix_lines("Conditional ablation: the shared direction ablated on prompts that fire the row category's condition",
                           conditional, categories)
    lines.append("condition val balanced accuracy: " + ", ".join(f"{_short(c)} {v:.2f}" for c, v in zip(categories, conditional["val_accuracy"])))
    lines.append(f"\n({report['seconds']} s)")
    return "\n".join(lines)
