"""The order of the examples in the gallery: from a first fit to the library's finer points."""

from pathlib import Path

ORDER = (
    "quickstart.py",
    "plot_embedding.py",
    "plot_pipeline.py",
    "plot_grid_search.py",
    "plot_n_clusters.py",
    "plot_images.py",
    "plot_text.py",
    "plot_custom_module.py",
)


class GalleryOrder:
    """sphinx-gallery sort key: the files of ``ORDER`` in that order, then the others by name."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        name = Path(filename).name
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)
