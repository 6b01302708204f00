"""bench_recipe_ablation's variants (no data needed; ``bench`` marker, outside ``make test``)::

    .venv/bin/pytest benchmarks/test_bench_recipe_ablation.py -m bench -p no:xdist -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_every_default_variant_trains_the_recipes_epochs_and_is_a_valid_config():
    import bench_recipe_ablation as b

    from compress.registry import get_strategy

    recipe = {**b.BASE_RECIPE, "epochs": b.EPOCHS}
    for name, over in b.DEFAULT_VARIANTS.items():
        cfg = {**recipe, **over}
        assert b.total_epochs(cfg) == b.total_epochs(recipe), name  # only the addition differs, not the compute
        assert cfg != recipe, name
        get_strategy("gp-prune")(cfg)


def test_variants_parse_and_refuse_bad_items():
    import bench_recipe_ablation as b

    assert b.parse_variants(None) == b.DEFAULT_VARIANTS
    assert b.parse_variants(['x={"kd_alpha": 0}']) == {"x": {"kd_alpha": 0}}
    for bad in ["x", "x=[1]", "={}", "x={"]:
        with pytest.raises(SystemExit):
            b.parse_variants([bad])
