"""Figures: original | masked | reconstructed points, each seen from three directions
(matplotlib 3D scatter, Agg backend, PNG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: (elevation, azimuth) of the three views: oblique, front, top.
VIEWS = ((25, 45), (0, 0), (90, -90))


@dataclass
class Panel:
    """One column of the figure: named point sets with colours."""

    title: str
    layers: list[tuple[np.ndarray, str]]  # (points [N, 3], matplotlib colour)


def draw_panels(panels: list[Panel], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(3.2 * len(panels), 3.0 * len(VIEWS)), dpi=80)
    for row, (elevation, azimuth) in enumerate(VIEWS):
        for column, panel in enumerate(panels):
            axes = figure.add_subplot(
                len(VIEWS), len(panels), row * len(panels) + column + 1, projection="3d"
            )
            for points, colour in panel.layers:
                if len(points):
                    axes.scatter(
                        points[:, 0], points[:, 1], points[:, 2], s=1.5, c=colour, depthshade=False
                    )
            axes.view_init(elev=elevation, azim=azimuth)
            axes.set_xlim(-1, 1), axes.set_ylim(-1, 1), axes.set_zlim(-1, 1)
            axes.set_axis_off()
            if row == 0:
                axes.set_title(panel.title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def patch_points(neighbourhood: np.ndarray, centres: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Absolute points `[n * k, 3]` of the patches selected by bool `keep` `[G]`."""
    return (neighbourhood[keep] + centres[keep][:, None]).reshape(-1, 3)
