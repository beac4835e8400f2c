"""What a fit does with each kind of rows, in one table: ``RECIPES[kind]``.

The kind is ``"image"`` with ``image_shape``, else the kind of flat rows that ``_geometry``
detects (or ``input_kind`` names). ``_settings`` reads the recipe to resolve every ``"auto"``
that depends on the kind; nothing else branches on it. The user guide's "Flat rows" and
"Images" sections say why each entry is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """The treatment of one kind of rows.

    Attributes
    ----------
    metric : {"euclidean", "cosine"}
        The metric of the input rows' nearest neighbours (the layout's input graph, the first
        positives of propagation, the neighbour views).
    starts : tuple of str
        The starts that ``init="auto"`` chooses from (``_starts``), cheapest first: with one,
        that start; with several, the first whose clusters the input rows' neighbour links
        cross almost nowhere, else the one that they cross least.
    min_start_rows : int
        With fewer rows, ``init="auto"`` gives SeLa's random equal split instead.
    views : {"noise", "neighbors", "terms", "affine"}
        The training views: Gaussian noise and masked features, a point between a row and one
        of its input neighbours, dropped terms, or random affine warps of images.
    propagation : bool
        Whether ``propagation="auto"`` turns invariance propagation on.
    repartition : bool
        Whether a fit from the random start re-partitions its labels by the embedding's
        neighbour links at half the schedule (with ``cluster_sizes="estimated"``).
    sizes : {"held", "vote"}
        What the label steps of ``cluster_sizes="estimated"`` aim at: the sizes of the current
        clusters, or those after each row takes the vote of its nearest neighbours in the
        network's embedding, so that sizes can move where the start's were wrong.
    layout_clusters : {"merged", "consensus"}
        How the layout start cuts its layout into clusters (``_layout.layout_labels``): parts
        merged along their links, which keeps unequal categories, or the consensus of mixtures
        of ``n_clusters`` components, which does not merge two categories of about equal size.
    learned_agreement : float
        From a start that the network learns first (mixture, layout), a label step runs only
        while the network's argmax agrees with this share of the labels: where the start is
        the best estimate (flat rows), a step on a network that has not fitted it moves rows
        to half-trained boundaries; where steps are to correct the start (images, whose
        network learns categories from warped views), they run earlier.
    """

    metric: str
    starts: tuple[str, ...]
    views: str
    propagation: bool
    repartition: bool = True
    min_start_rows: int = 0
    sizes: str = "held"
    layout_clusters: str = "merged"
    learned_agreement: float = 0.98


# Rows whose categories lie on manifolds that their nearest neighbours follow.
_NEIGHBOR_RECIPE = Recipe("cosine", ("mixture", "layout"), "neighbors", propagation=True)

# The recipe of each kind (user guide, "Flat rows" and "Images").
RECIPES: dict[str, Recipe] = {
    # Measurements: a few columns, or wide ones on scales of their own.
    "tabular": Recipe("euclidean", ("mixture",), "noise", propagation=False),
    # The outputs of another model: many signed features.
    "embedding": _NEIGHBOR_RECIPE,
    # Pixels, histograms, the features of a network with ReLU outputs.
    "nonnegative": _NEIGHBOR_RECIPE,
    # Documents: TF-IDF or counts.
    "sparse": Recipe("cosine", ("kmeans",), "terms", propagation=False, repartition=False),
    # Pixels of categories, as images: the consensus layout start and voted sizes.
    "image": Recipe(
        "cosine",
        ("layout",),
        "affine",
        propagation=True,
        min_start_rows=5_001,
        sizes="vote",
        layout_clusters="consensus",
        learned_agreement=0.9,
    ),
}
