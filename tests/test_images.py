"""Image-aware mode: ``image_shape``, image views, the convolutional encoder, propagation."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from sklearn_selflabel import SelfLabelingClusterer
from sklearn_selflabel.augment import ImageAugment, TabularAugment, TermDropout
from sklearn_selflabel.modules import ConvEncoder, GridAveragePool


def images(n=8, shape=(1, 12, 12), seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, int(np.prod(shape))))).float()


def test_image_views_only_in_training_and_only_with_strength():
    x = images()
    augment = ImageAugment((1, 12, 12), 1.0).eval()
    assert torch.equal(augment(x), x)
    assert torch.equal(ImageAugment((1, 12, 12), 0.0).train()(x), x)
    augment.train()
    torch.manual_seed(0)
    views = augment(x)
    assert views.shape == x.shape and views.dtype == x.dtype
    assert not torch.allclose(views, x)
    # Each row gets its own random map: identical rows give different views.
    same = augment(x[:1].repeat(4, 1))
    assert not torch.allclose(same[0], same[1])


def test_image_views_keep_a_uniform_background_and_move_a_digit_a_little():
    augment = ImageAugment((1, 16, 16), 0.5).train()
    torch.manual_seed(0)
    flat = torch.full((4, 256), -0.5)
    np.testing.assert_allclose(augment(flat).numpy(), -0.5, rtol=1e-6)
    # A 4x4 square in the centre: its centre of mass moves by at most the documented
    # 12.5% of the side (2 pixels) plus what rotation, scale and shear add near the centre.
    image = torch.zeros(64, 1, 16, 16)
    image[:, :, 6:10, 6:10] = 1.0
    views = augment(image.reshape(64, -1)).reshape(64, 16, 16)
    grid = torch.arange(16.0)
    mass = views.sum(dim=(1, 2))
    row = (views.sum(dim=2) * grid).sum(dim=1) / mass
    col = (views.sum(dim=1) * grid).sum(dim=1) / mass
    shift = torch.stack([row - 7.5, col - 7.5], dim=1).abs()
    assert float(shift.max()) <= 2.5
    assert float(shift.mean()) > 0.2
    np.testing.assert_allclose(mass.numpy(), 16.0, rtol=0.35)


def test_channels_are_warped_together():
    augment = ImageAugment((3, 10, 10), 1.0).train()
    torch.manual_seed(0)
    one = images(4, (1, 10, 10))
    views = augment(one.repeat(1, 3)).reshape(4, 3, 100)
    np.testing.assert_allclose(views[:, 0].numpy(), views[:, 2].numpy())


def test_tabular_views_mask_and_add_noise():
    x = torch.ones(1000, 20)
    assert torch.equal(TabularAugment(0.5).eval()(x), x)
    torch.manual_seed(0)
    views = TabularAugment(0.5).train()(x)
    assert 0.5 < float(views.mean()) < 0.9  # a quarter of the entries masked to 0
    assert 0.4 < float((views - x).std()) < 0.8


def test_term_dropout_drops_stored_entries_and_keeps_a_sparse_batch_sparse():
    rows = torch.rand(400, 50) * (torch.rand(400, 50) < 0.1)
    batch = rows.to_sparse_coo().coalesce()
    assert torch.equal(TermDropout(0.25).eval()(batch).to_dense(), rows)
    torch.manual_seed(0)
    view = TermDropout(0.25).train()(batch)
    assert view.is_sparse and torch.equal(view.indices(), batch.indices())
    kept = view.values() != 0
    assert 0.70 < float(kept.float().mean()) < 0.80
    torch.testing.assert_close(view.values()[kept], batch.values()[kept] / 0.75)
    dense_view = TermDropout(0.25).train()(rows)
    assert torch.equal(dense_view != 0, (dense_view != 0) & (rows != 0))
    with pytest.raises(ValueError, match="rate"):
        TermDropout(1.0)


def test_conv_encoder_maps_flat_images_to_embeddings():
    encoder = ConvEncoder((1, 12, 12), channels=(4, 8, 8), embedding_dim=5)
    assert encoder(images(3)).shape == (3, 5)
    odd = ConvEncoder((2, 7, 5), channels=(4, 4, 4), embedding_dim=3)
    assert odd(torch.zeros(2, 70)).shape == (2, 3)


@pytest.mark.parametrize("pooled_size", [1, 2, 3])
def test_conv_encoder_embeds_the_last_map_pooled_onto_a_grid(pooled_size):
    encoder = ConvEncoder((1, 12, 12), channels=(4, 8, 8), embedding_dim=5, pooled_size=pooled_size)
    assert encoder.layers[-1].in_features == 8 * pooled_size**2
    assert encoder(images(3)).shape == (3, 5)


@pytest.mark.parametrize(
    ("input_size", "size"), [((7, 7), 3), ((4, 4), 3), ((2, 2), 3), ((5, 3), 2), ((9, 9), 1)]
)
def test_grid_pooling_is_adaptive_average_pooling(input_size, size):
    maps = torch.randn(4, 6, *input_size).contiguous(memory_format=torch.channels_last)
    expected = torch.nn.AdaptiveAvgPool2d(size)(maps)
    pooled = GridAveragePool(input_size, size)(maps)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(GridAveragePool(input_size, size)(maps.contiguous()), expected)
    assert not GridAveragePool(input_size, size).state_dict()


def tiny(**params):
    defaults = dict(
        n_clusters=3, n_heads=2, embedding_dim=8, max_epochs=3, n_label_steps=3,
        batch_size=32, random_state=0,
    )  # fmt: skip
    return SelfLabelingClusterer(**{**defaults, **params})


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(n_class=3, return_X_y=True)
    return X[:150].astype(np.float32), y[:150]


def test_image_shape_uses_the_conv_encoder_and_propagation(digits):
    X, _ = digits
    model = tiny(image_shape=(8, 8)).fit(X)
    assert isinstance(model.net_.module_.encoder, ConvEncoder)
    assert "propagation" in dict(model.net_.callbacks_)
    assert model.transform(X).shape == (150, 8)
    assert model.predict(X).shape == (150,)
    # Channels-first spelling of the same shape fits the same model.
    np.testing.assert_array_equal(tiny(image_shape=(1, 8, 8)).fit(X).labels_, model.labels_)


def test_propagation_auto_is_on_for_images_and_wide_rows_not_for_tables(digits):
    X, _ = digits
    standardized = (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-3)
    table = standardized[:, 16:48]  # fewer than 64 features: a table
    assert "propagation" not in dict(tiny().fit(table).net_.callbacks_)
    assert "propagation" in dict(tiny(propagation=True).fit(table).net_.callbacks_)
    # 64 signed features: an embedding, which trains as pixels do.
    assert "propagation" in dict(tiny().fit(standardized).net_.callbacks_)
    assert "propagation" in dict(tiny().fit(X).net_.callbacks_)  # pixels: non-negative
    assert "propagation" not in dict(tiny(propagation=False).fit(X).net_.callbacks_)
    assert "propagation" not in dict(
        tiny(image_shape=(8, 8), propagation=False).fit(X).net_.callbacks_
    )
    assert "propagation" not in dict(
        tiny(image_shape=(8, 8), label_mode="online", max_epochs=1).fit(X).net_.callbacks_
    )


@pytest.mark.parametrize(
    ("shape", "match"),
    [((8, 9), "holds 72 pixels but X has 64 features"), ((8,), "must be"), ((2, 0, 32), "must be")],
)
def test_bad_image_shape_is_named(digits, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny(image_shape=shape).fit(digits[0])


def test_propagation_parameters_are_searchable(digits):
    X, _ = digits
    search = GridSearchCV(
        tiny(image_shape=(8, 8)),
        {"propagation_neighbors": [2, 4], "propagation_weight": [0.0, 1.0]},
        cv=2,
    ).fit(X)
    assert search.best_params_["propagation_neighbors"] in (2, 4)
    assert clone(search.best_estimator_).get_params()["image_shape"] == (8, 8)


def test_auto_n_init_trains_small_image_fits_from_the_random_split_twice(tmp_path, monkeypatch):
    from sklearn_selflabel import _recipes, _settings

    X = np.random.default_rng(0).random((40, 16)).astype(np.float32)
    params = dict(n_clusters=2, n_heads=1, embedding_dim=4, propagation=False, random_state=0)

    def n_fits(**more) -> int:
        return len(SelfLabelingClusterer(**params, **more).fit(X).init_scores_)

    image = dict(image_shape=(4, 4), batch_size=4, init="random")
    assert n_fits(**image, max_epochs=100) == 2  # 10 batches an epoch: 1000 steps
    assert n_fits(**image, max_epochs=101) == 1
    assert n_fits(**image, max_epochs=5, checkpoint_dir=tmp_path) == 1
    # Images start from their layout only when they are many; a fit from a start, once.
    short_image = SelfLabelingClusterer(**params, image_shape=(4, 4), batch_size=4, max_epochs=5)
    assert _settings.resolve_settings(short_image, X).labels.starts == ("random",)
    recipe = _recipes.RECIPES["image"]
    monkeypatch.setitem(
        _recipes.RECIPES, "image", dataclasses.replace(recipe, min_start_rows=len(X) - 1)
    )
    from_layout = _settings.resolve_settings(short_image, X)
    assert from_layout.labels.starts == ("layout",) and len(from_layout.seeds) == 1
    flat = dict(hidden_layer_sizes=(4,), batch_size=4, max_epochs=5)
    assert n_fits(**flat, input_kind="tabular") == 1
    assert n_fits(**flat) == 1
    assert n_fits(**flat, init="random") == 1


def test_auto_epochs_from_the_random_split_give_enough_steps():
    X = np.random.default_rng(0).random((40, 16)).astype(np.float32)
    # Every epoch runs: no stop at unchanged labels.
    params = dict(
        n_clusters=2,
        n_heads=1,
        embedding_dim=4,
        propagation=False,
        init="random",
        n_steps_no_change=None,
        random_state=0,
    )

    def image_epochs(batch_size: int) -> int:
        model = SelfLabelingClusterer(image_shape=(4, 4), batch_size=batch_size, **params)
        return model.fit(X).n_iter_

    assert image_epochs(2) == 60  # 20 batches an epoch: 60 epochs make more than 960 steps
    assert image_epochs(4) == 96  # 10 batches an epoch: 960 steps
    assert image_epochs(40) == 120  # one batch an epoch: at most 120 epochs
    tabular = SelfLabelingClusterer(hidden_layer_sizes=(4,), batch_size=40, **params).fit(X)
    assert tabular.n_iter_ == 120
    explicit = SelfLabelingClusterer(image_shape=(4, 4), max_epochs=3, batch_size=40, **params)
    assert explicit.fit(X).n_iter_ == 3


def test_auto_epochs_from_a_clustering_of_the_rows_are_40_whatever_the_batches(monkeypatch):
    from sklearn_selflabel import _recipes, _settings

    X = np.random.default_rng(0).random((200, 16)).astype(np.float32)
    recipe = _recipes.RECIPES["image"]
    monkeypatch.setitem(_recipes.RECIPES, "image", dataclasses.replace(recipe, min_start_rows=0))
    for batch_size in (2, 200):  # 100 batches an epoch, and one
        image = SelfLabelingClusterer(n_clusters=2, image_shape=(4, 4), batch_size=batch_size)
        assert _settings.resolve_settings(image, X).labels.starts == ("layout",)
        assert _settings.resolve_settings(image, X).max_epochs == 40
        assert _settings.resolve_settings(image.set_params(init="random"), X).max_epochs >= 60
        for init in ("mixture", "kmeans"):
            table = SelfLabelingClusterer(n_clusters=2, batch_size=batch_size, init=init)
            assert _settings.resolve_settings(table, X).max_epochs == 40
    # Online mode labels every batch from the network: it has no start to refine.
    online = SelfLabelingClusterer(n_clusters=2, label_mode="online", batch_size=200)
    assert _settings.resolve_settings(online, X).max_epochs == 120


def test_mixed_precision_auto_trains_image_and_layout_fits_in_bfloat16_where_native(
    digits,
):
    from sklearn_selflabel._settings import native_bfloat16

    X, _ = digits
    native = native_bfloat16(torch.device("cpu"))
    image = tiny(image_shape=(8, 8)).fit(X)
    assert image.net_.mixed_precision is native
    # Pixels as flat rows start from their layout, whose autoencoder and network are
    # fully connected and fast in bfloat16 too; from the random split they keep float32.
    assert tiny().fit(X).net_.mixed_precision is native
    assert tiny(init="random").fit(X).net_.mixed_precision is False
    forced = tiny(image_shape=(8, 8), mixed_precision=True).fit(X)
    assert forced.net_.mixed_precision is True
    with forced.net_.autocast(True):
        assert forced.net_.module_(torch.from_numpy(X[:4]), output="logits").dtype == torch.bfloat16
    # Outside training the float32 weights give float32 outputs, and the same ones twice.
    assert forced.transform(X).dtype == np.float32
    np.testing.assert_array_equal(forced.predict(X), forced.labels_)
    off = tiny(image_shape=(8, 8), mixed_precision=False).fit(X)
    assert off.net_.mixed_precision is False
