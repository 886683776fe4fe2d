"""PNG plots of a probe report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

__all__ = ["LAYERS_PNG", "KEPT_PNG", "CONFUSION_PNG", "plot_layers", "plot_kept", "plot_confusion", "write_plots"]

LAYERS_PNG = "accuracy_per_layer.png"
KEPT_PNG = "neurons_kept.png"
CONFUSION_PNG = "confusion_matrix.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_layers(report: Mapping[str, Any], path: str | Path) -> Path:
    """Validation accuracy of every layer probe, one line per (site, pool); STC as a reference line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in report["layers"]:
        curves.setdefault((e["site"], e["pool"]), []).append((e["layer"], e["val"]))
    for (site, pool), pts in curves.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3,
                linestyle="-" if site == "hidden" else "--", label=f"{site}/{pool}")
    stc = report["stc"]
    ax.axhline(100 * stc["val"], color="k", lw=1, ls=":", label=f"STC val ({stc['site']}/{stc['pool']})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer entry")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{report['label']}: per-layer probes")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_kept(report: Mapping[str, Any], path: str | Path) -> Path:
    """Neurons of the winner per layer: fed to the final probe (kept) and used (nonzero weight)."""
    plt = _pyplot()
    rows = report["stc"].get("features_per_layer", [])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    labels = [f"{r['site'][0]}{r['layer']}" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["kept"] for r in rows], width=0.4, label="kept (eta)")
    ax.bar([x + 0.2 for x in xs], [r["nonzero"] for r in rows], width=0.4, label="nonzero weight")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7, rotation=90 if len(rows) > 20 else 0)
    stc = report["stc"]
    ax.set_title(f"STC winner: {stc['site']}/{stc['pool']}, eta {stc['eta']:g}, k {stc['k']}, C {stc['C']:g}")
    ax.set_ylabel("neurons")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_confusion(report: Mapping[str, Any], path: str | Path) -> Path:
    """The STC classifier's confusion matrix on test (rows: true class, columns: predicted)."""
    plt = _pyplot()
    cm = report["stc"]["confusion_matrix"]
    classes = [str(c) for c in report["classes"]]
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 1.8), dpi=110)
    ax.imshow(cm, cmap="Blues")
    top = max(max(row) for row in cm) or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color="white" if cm[i][j] > 0.6 * top else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(classes, rotation=30 if k > 3 else 0)
    ax.set_yticks(range(k))
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"STC on test: {100 * report['stc']['test']:.1f}% accurate", fontsize=9)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def _save(fig, path) -> Any:
    """Write a figure as PNG: to a file, or (a Location on object storage) as one object."""
    if getattr(path, "is_local", True):
        fig.savefig(path)
        return Path(path)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.write_bytes(buf.getvalue())
    return path


def write_plots(report: Mapping[str, Any], folder: Any) -> list[Any]:
    """Every plot into a folder (a path, or a Location in a bucket); returns their paths."""
    from ..store.location import Location

    folder = folder if isinstance(folder, Location) else Path(folder)
    paths = [plot_layers(report, folder / LAYERS_PNG), plot_kept(report, folder / KEPT_PNG)]
    if report["stc"].get("confusion_matrix"):
        paths.append(plot_confusion(report, folder / CONFUSION_PNG))
    return paths
