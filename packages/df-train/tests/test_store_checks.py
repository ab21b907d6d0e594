"""The trainer refuses a store that does not hold what the recipe names: another structure
(``data.struct``) or another number of video frames per latent frame than the model's."""

from __future__ import annotations

import pytest

from df_train.config import DataConfig, apply_overrides
from df_train.recipes import get_recipe, hdtf_base, hdtf_base_extract
from df_train.trainer import Trainer


def _config(store, out, *sets):
    return apply_overrides(
        get_recipe("synthtalk_tiny"), [f"data.store={store}", f"out_dir={out}", *sets]
    )


def test_store_structure_must_be_the_recipes(tiny_store, tmp_path):
    Trainer(_config(tiny_store, tmp_path, "data.struct=gt"))  # SynthTalk: ground truth
    with pytest.raises(ValueError, match=r"structure is 'gt'.*--struct liveportrait"):
        Trainer(_config(tiny_store, tmp_path, "data.struct=liveportrait"))
    with pytest.raises(ValueError, match=r"DataConfig\.struct"):
        DataConfig(struct="flame")


def test_frames_per_latent_must_match(tiny_store, tmp_path):
    with pytest.raises(ValueError, match=r"frames_per_latent=1.*model.frames_per_latent=4"):
        Trainer(_config(tiny_store, tmp_path, "model.frames_per_latent=4"))


def test_hdtf_base_names_its_extraction():
    recipe, extract = hdtf_base(), hdtf_base_extract("weights/motion_extractor.pth")
    assert (extract.struct, recipe.data.struct) == ("liveportrait", "liveportrait")
    assert recipe.model.struct_raw_dim == 4 * 70 and recipe.model.frames_per_latent == 4
    assert extract.codec.startswith("Wan-AI/Wan2.1") and extract.codec_subfolder == "vae"
    assert recipe.data.hflip_prob == 0.0  # LivePortrait's structure has no known mirror
