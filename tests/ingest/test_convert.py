"""Conversion at ingest: inputs of other sizes and colour modes fitted to their model when a rule
([ingest.convert."NAME"] or the tag robustness.convert) allows it, dead-lettered with the rule to
add when none does. Tensor code against closed forms; the pipeline against a real MLflow store
with a 3×32×32 CNN trained on digits."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sqlalchemy import select

from monitor.db.models import DeadLetter, InputScore
from monitor.errors import ConfigError
from monitor.ingest.convert import convert_image, resize_image, to_channels
from monitor.ingest.convert_rules import (
    ConvertRule,
    config_rules,
    conversion_kinds,
    tag_rule,
)
from monitor.ingest.records import Limits, parse_record
from tests.ingest.lines import record, write_lines

MODEL = "rgb32"
CROP = ConvertRule("crop", True, "test")


# -- tensor code ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["crop", "stretch"])
@pytest.mark.parametrize("shape", [(3, 512, 512), (3, 96, 64), (3, 20, 24)])
def test_a_constant_image_stays_constant(mode, shape) -> None:
    colour = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1)
    out = resize_image(colour.expand(shape).clone(), (32, 32), mode)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, colour.expand(3, 32, 32), atol=1e-6)


def test_crop_keeps_the_centre_and_stretch_squeezes_the_whole() -> None:
    """64×128 (H×W), white in the centre 64×64, black left and right. Halving, the antialiased
    bilinear kernel weighs 4 input columns 1, 3, 3, 1 (/8); quartering, 8 columns 1, 3, 5, 7,
    7, 5, 3, 1 (/32): the columns on the edges of the white block are 7/8 and 1/8."""
    image = torch.zeros(1, 64, 128)
    image[:, :, 32:96] = 1.0
    cropped = resize_image(image, (32, 32), "crop")  # shorter side 64 -> 32: 32×64, centre 32
    row = torch.ones(32)
    row[[0, -1]] = 7 / 8  # scaled columns 16 and 47, at the block's edges
    assert torch.allclose(cropped, row.expand(1, 32, 32), atol=1e-6)
    stretched = resize_image(image, (32, 32), "stretch")  # 128 -> 32: 8 black columns a side
    row = torch.zeros(32)
    row[8:24] = 1.0
    row[[7, 24]], row[[8, 23]] = 1 / 8, 7 / 8
    assert torch.allclose(stretched, row.expand(1, 32, 32), atol=1e-6)


def test_crop_is_resize_of_the_shorter_side_then_a_centre_crop() -> None:
    """torchvision's Resize(32) + CenterCrop(32): 48×80 -> 32×53 (53 = int(32·80/48)), then
    rows 0..32 and columns round(21/2) = 10..42."""
    torch.manual_seed(0)
    image = torch.rand(3, 48, 80)
    scaled = F.interpolate(image[None], size=(32, 53), mode="bilinear", antialias=True)[0]
    expected = scaled.clamp(0, 1)[:, :, 10:42]
    assert torch.allclose(resize_image(image, (32, 32), "crop"), expected, atol=1e-6)


def test_bilinear_downscaling_matches_pillow() -> None:
    """Antialiased like Pillow's BILINEAR resize (what a serving stack on PIL would feed)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 160), indexing="ij")
    grey = (0.5 + 0.5 * torch.sin(6 * xx) * torch.cos(4 * yy)) * 255
    pixels = grey.round().to(torch.uint8).numpy()
    pillow = np.asarray(Image.fromarray(pixels).resize((40, 30), Image.BILINEAR), np.float32)
    ours = resize_image(torch.from_numpy(pixels).float()[None] / 255, (30, 40), "stretch")
    assert np.abs(ours[0].numpy() * 255 - pillow).max() <= 1.0


def test_grey_to_rgb_repeats_and_rgb_to_grey_is_601_luma() -> None:
    torch.manual_seed(1)
    grey = torch.rand(1, 5, 7)
    rgb, step = to_channels(grey, 3)
    assert step == "L→RGB" and rgb.shape == (3, 5, 7)
    assert all(torch.equal(rgb[c], grey[0]) for c in range(3))
    colour = torch.rand(3, 5, 7)
    luma, step = to_channels(colour, 1)
    assert step == "RGB→L"
    expected = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    assert torch.allclose(luma[0], expected, atol=1e-6)


def test_alpha_is_composited_over_white() -> None:
    rgba = torch.zeros(4, 2, 2)
    rgba[:3] = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1)
    rgba[3] = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    rgb, step = to_channels(rgba, 3)
    assert step == "RGBA→RGB (alpha over white)"
    alpha = rgba[3]
    for c, value in enumerate((0.2, 0.4, 0.6)):
        assert torch.allclose(rgb[c], value * alpha + 1 - alpha, atol=1e-6)
    assert torch.allclose(rgb[:, 0, 0], torch.ones(3))  # fully transparent: white
    grey, step = to_channels(torch.stack([torch.full((2, 2), 0.3), rgba[3]]), 1)
    assert step == "LA→L (alpha over white)"
    assert torch.allclose(grey[0], 0.3 * alpha + 1 - alpha, atol=1e-6)


def test_a_conversion_says_what_was_done_and_nothing_when_nothing_was() -> None:
    image = torch.full((1, 64, 48), 0.25)
    out, conversion = convert_image(image, (3, 32, 32), CROP)
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.full((3, 32, 32), 0.25))
    assert conversion.text == "resized 64×48→32×32 (crop); L→RGB"  # repeated after the resize
    assert conversion_kinds(conversion.text) == ["resize", "colour"]
    _, conversion = convert_image(torch.rand(3, 64, 64), (1, 32, 32), CROP)
    assert conversion.text == "RGB→L; resized 64×64→32×32 (crop)"  # fewer channels to resize
    same, conversion = convert_image(image, (1, 64, 48), CROP)
    assert conversion is None and same is image
    # a rule converts only what it allows
    out, conversion = convert_image(image, (3, 32, 32), ConvertRule("none", True))
    assert out.shape == (3, 64, 48) and conversion.text == "L→RGB"
    out, conversion = convert_image(image, (3, 32, 32), ConvertRule("stretch", False))
    assert out.shape == (1, 32, 32) and conversion.text == "resized 64×48→32×32 (stretch)"


# -- rules ---------------------------------------------------------------------------------


def test_rules_from_the_configuration_and_tags() -> None:
    rules = config_rules({"ingest": {"convert": {"a b": {"resize": "stretch"}}}})
    assert rules == {"a b": ConvertRule("stretch", False, '[ingest.convert."a b"]')}
    assert tag_rule({"robustness.convert": '{"colour": true}'}) == ConvertRule(
        "none", True, "tag robustness.convert"
    )
    assert tag_rule({}) is None
    with pytest.raises(ConfigError, match=r'\[ingest.convert."m"\]: resize must be "crop"'):
        config_rules({"ingest": {"convert": {"m": {"resize": "fit"}}}})
    with pytest.raises(ConfigError, match="unknown key 'color'"):
        config_rules({"ingest": {"convert": {"m": {"color": True}}}})
    with pytest.raises(ConfigError, match="colour must be true or false"):
        config_rules({"ingest": {"convert": {"m": {"colour": "yes"}}}})
    with pytest.raises(ValueError, match=r"its tag robustness\.convert is not JSON"):
        tag_rule({"robustness.convert": "crop"})


def test_a_bad_rule_stops_the_cli_at_config_load(home, robmon) -> None:
    Path("robmon.toml").write_text('[ingest.convert."rgb32"]\nresize = "fit"\n')
    result = robmon("config")
    assert result.code == 1
    assert result.stderr.strip() == (
        'error: robmon.toml: [ingest.convert."rgb32"]: resize must be "crop", "stretch" or '
        "\"none\", not 'fit'."
    )


# -- decoding keeps transparency -----------------------------------------------------------


def test_a_transparent_png_keeps_its_alpha_and_an_opaque_one_drops_it(tmp_path) -> None:
    limits = Limits(input_root=tmp_path)
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 255
    opaque = parse_record(record(inp={"png_b64": _png(pixels, "RGBA")}), limits)
    assert opaque.image.shape == (3, 4, 4)  # as before: nothing to convert
    pixels[0, 0, 3] = 0
    transparent = parse_record(record(inp={"png_b64": _png(pixels, "RGBA")}), limits)
    assert transparent.image.shape == (4, 4, 4)
    assert transparent.image[3, 0, 0] == 0 and transparent.image[3, 1, 1] == 1


# -- the pipeline --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_store(tmp_path_factory) -> Path:
    """A ROBMON_HOME with ``rgb32``: a 3×32×32 CNN trained on digits scaled up to 32×32 RGB."""
    from monitor.architectures import small_cnn_rgb
    from monitor.config import load_settings
    from monitor.datasets import load_dataset
    from monitor.db.session import open_database
    from monitor.registry import Registry
    from monitor.training import train_classifier

    store = tmp_path_factory.mktemp("rgb32") / ".robmon"
    settings = load_settings({"ROBMON_HOME": str(store)})
    train = load_dataset("digits", "train")
    x = F.interpolate(train.x[:300], size=(32, 32), mode="nearest").expand(-1, 3, -1, -1)
    torch.manual_seed(0)
    model = small_cnn_rgb()
    train_classifier(model, x.contiguous(), train.y[:300], epochs=3, lr=2e-3, seed=0)
    Registry(settings).register_torch(model.eval(), MODEL, x[:2].contiguous())
    open_database(settings).dispose()
    return store


@pytest.fixture
def rgb_home(home: Path, rgb_store: Path) -> Path:
    home.mkdir(parents=True)
    for name in ("mlflow.db", "robmon.db"):
        shutil.copy(rgb_store / name, home / name)
    return home


def _png(pixels: np.ndarray, mode: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _inputs() -> dict[str, dict]:
    """One record per case (request id -> input): what each needs is in its name."""
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[...] = (51, 102, 204)
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent: white over white
    rgba[..., :3] = 10
    return {
        "fits": {"array": torch.full((3, 32, 32), 0.5).tolist()},
        "larger-png": {"png_b64": _png(rgb, "RGB")},
        "grey-png": {"png_b64": _png(np.full((32, 32), 153, np.uint8), "L")},
        "rgba-png": {"png_b64": _png(rgba, "RGBA")},
        "array-40": {"array": torch.full((3, 40, 40), 0.25).tolist()},
        "grey-48": {"png_b64": _png(np.full((48, 48), 102, np.uint8), "L")},
    }


def _ingest(robmon, tmp_path: Path) -> dict:
    lines = [_line(rid, inp) for rid, inp in _inputs().items()]
    log = write_lines(tmp_path / "prod.jsonl", lines)
    result = robmon("ingest", str(log), "--json")
    assert result.code == 0, result.stderr
    return result.json()


def _rows(table) -> dict[str, object]:
    from monitor.config import load_settings
    from monitor.db.session import open_database

    db = open_database(load_settings())
    with db.session() as s:
        if table is InputScore:
            rows = {r.request_id: r for r in s.scalars(select(InputScore))}
        else:
            rows = {_rid(r.excerpt): r for r in s.scalars(select(DeadLetter))}
        s.expunge_all()
    db.dispose()
    return rows


def _line(rid: str, inp: dict) -> str:
    """A record with its id first (a dead letter's excerpt is cut short, the id stays)."""
    return json.dumps({"id": rid, **json.loads(record(inp=inp, model=MODEL))})


def _rid(excerpt: str) -> str:
    return re.match(r'\{"id": "([^"]+)"', excerpt)[1]


def _conversions() -> dict[tuple[str, str], float]:
    from monitor.metrics import REGISTRY

    return {
        (MODEL, kind): REGISTRY.get_sample_value(
            "robmon_ingest_conversions_total", {"model": MODEL, "kind": kind}
        )
        or 0.0
        for kind in ("resize", "colour")
    }


def _confidence(image: torch.Tensor) -> float:
    """The model's top probability on one C×H×W image, loaded from the registry directly."""
    from monitor.config import load_settings
    from monitor.registry import Registry

    registry = Registry(load_settings())
    module = registry.load(registry.resolve(MODEL)).module
    with torch.no_grad():
        return float(torch.softmax(module(image[None]), dim=1).max())


def test_with_a_configured_rule_every_input_is_converted_and_recorded(
    rgb_home, robmon, tmp_path
) -> None:
    Path("robmon.toml").write_text(f'[ingest.convert."{MODEL}"]\nresize = "crop"\ncolour = true\n')
    before = _conversions()
    summary = _ingest(robmon, tmp_path)
    assert (summary["scored"], summary["dead_letters"], summary["converted"]) == (6, 0, 5)
    rows = _rows(InputScore)
    assert {rid: r.conversion for rid, r in rows.items()} == {
        "fits": None,
        "larger-png": "resized 64×96→32×32 (crop)",
        "grey-png": "L→RGB",
        "rgba-png": "RGBA→RGB (alpha over white)",
        "array-40": "resized 40×40→32×32 (crop)",
        "grey-48": "resized 48×48→32×32 (crop); L→RGB",
    }
    after = _conversions()
    assert after[(MODEL, "resize")] - before[(MODEL, "resize")] == 3
    assert after[(MODEL, "colour")] - before[(MODEL, "colour")] == 3
    [stats] = robmon("inputs", "stats", "--json").json()
    assert (stats["count"], stats["converted"]) == (6, 5)
    # the model saw the closed forms: a constant colour stays constant, grey is repeated,
    # a transparent image is white
    expected = {
        "larger-png": torch.tensor([51, 102, 204]).view(3, 1, 1).expand(3, 32, 32) / 255,
        "grey-png": torch.full((3, 32, 32), 153 / 255),
        "rgba-png": torch.ones(3, 32, 32),
        "array-40": torch.full((3, 32, 32), 0.25),
        "grey-48": torch.full((3, 32, 32), 102 / 255),
    }
    for rid, image in expected.items():
        assert rows[rid].confidence == pytest.approx(_confidence(image.float()), abs=1e-5), rid


def test_without_a_rule_the_dead_letter_names_the_rule_to_add(rgb_home, robmon, tmp_path) -> None:
    before = _conversions()
    summary = _ingest(robmon, tmp_path)
    assert (summary["scored"], summary["dead_letters"], summary["converted"]) == (1, 5, 0)
    assert _rows(InputScore)["fits"].conversion is None
    dead = _rows(DeadLetter)
    section = f'[ingest.convert."{MODEL}"]'
    assert dead["larger-png"].reason.endswith(
        "takes inputs shaped 3×32×32 (its signature) but the input is "
        f'3×64×96; add {section} resize = "crop" (or tag robustness.convert '
        """'{"resize": "crop"}') to convert it."""
    )
    assert f"the input is 1×32×32; add {section} colour = true (" in dead["grey-png"].reason
    assert f"the input is 4×32×32; add {section} colour = true (" in dead["rgba-png"].reason
    assert f'the input is 1×48×48; add {section} resize = "crop", colour = true (' in (
        dead["grey-48"].reason
    )
    assert _conversions() == before


def test_the_tag_converts_and_the_configuration_wins_over_it(rgb_home, robmon, tmp_path) -> None:
    from monitor.config import load_settings
    from monitor.registry import Registry

    registry = Registry(load_settings())
    registry.set_tags(
        registry.resolve(MODEL), {"robustness.convert": '{"resize": "stretch", "colour": true}'}
    )
    assert _ingest(robmon, tmp_path)["converted"] == 5
    assert _rows(InputScore)["larger-png"].conversion == "resized 64×96→32×32 (stretch)"

    Path("robmon.toml").write_text(f'[ingest.convert."{MODEL}"]\nresize = "crop"\n')
    lines = [
        _line(f"again-{rid}", inp)
        for rid, inp in _inputs().items()
        if rid in ("larger-png", "grey-png")
    ]
    result = robmon("ingest", str(write_lines(tmp_path / "more.jsonl", lines)), "--json")
    assert (result.json()["scored"], result.json()["dead_letters"]) == (1, 1)
    assert _rows(InputScore)["again-larger-png"].conversion == "resized 64×96→32×32 (crop)"
    assert _rows(DeadLetter)["again-grey-png"].reason.endswith(
        f'; add colour = true to [ingest.convert."{MODEL}"] to convert it.'
    )


def test_a_bad_tag_is_named_in_the_dead_letter(rgb_home, robmon, tmp_path) -> None:
    from monitor.config import load_settings
    from monitor.registry import Registry

    registry = Registry(load_settings())
    registry.set_tags(registry.resolve(MODEL), {"robustness.convert": '{"resize": "fit"}'})
    summary = _ingest(robmon, tmp_path)
    assert (summary["scored"], summary["dead_letters"]) == (1, 5)
    assert _rows(DeadLetter)["larger-png"].reason.endswith(
        """the input is 3×64×96; its tag robustness.convert is not valid: resize must be "crop", """
        """"stretch" or "none", not 'fit', so nothing was converted."""
    )
