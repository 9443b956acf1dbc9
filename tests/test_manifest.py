"""weights_manifest.yaml against the real deploy prototxts in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

import senet

from senet.converter.load import load_net
from senet.errors import UsageError
from senet.manifest import fingerprint, load_manifest, lookup, recognise
from tests.parity.synthetic import colour_entry, with_entries, write_colour_net, write_manifest
from tests.conftest import require_shared

PROTOTXTS = {
    "se_bn_inception": "SE-BN-Inception", "se_resnet50": "SE-ResNet-50",
    "se_resnet101": "SE-ResNet-101", "se_resnet152": "SE-ResNet-152",
    "se_resnext50_32x4d": "SE-ResNeXt-50", "se_resnext101_32x4d": "SE-ResNeXt-101",
    "senet154": "SENet-154",
}
# Published file sizes in MB (ANCHORS.md): stored floats x 4 bytes.
PUBLISHED_MB = {"se_bn_inception": 46, "se_resnet50": 107, "se_resnet101": 189,
                "se_resnet152": 256, "se_resnext50_32x4d": 105, "se_resnext101_32x4d": 187,
                "senet154": 440}


BUNDLED = ["digits_se_demo"]  # tests/examples/test_digits_demo.py checks it


def test_manifest_lists_the_seven_models_and_the_bundled_demo():
    assert sorted(load_manifest()) == sorted([*PROTOTXTS, *BUNDLED])
    for name in PROTOTXTS:
        entry = load_manifest()[name]
        assert entry.class_order == "devkit"
        assert (entry.classes, entry.weights_path, entry.val_dir) == (None, None, None)


@pytest.mark.parametrize("name", sorted(PROTOTXTS))
def test_fingerprint_matches_prototxt(name):
    path = require_shared("senet_prototxt", PROTOTXTS[name] + ".prototxt")
    net = load_net(prototxt=str(path), weights_optional=True)
    entry = load_manifest()[name]
    assert fingerprint(net) == entry.fingerprint
    assert recognise(net) == entry
    # 4 bytes per stored float is the published file size, to within a MB
    assert abs(PUBLISHED_MB[name] - entry.fingerprint.parameters * 4 / 2**20) < 1
    assert entry.file_size_mb == PUBLISHED_MB[name]


def test_lookup_by_alias_and_unknown_name():
    assert lookup("SE-ResNet-50").name == "se_resnet50"
    assert lookup("legacy_senet154").name == "senet154"
    with pytest.raises(UsageError, match="known: se_bn_inception"):
        lookup("resnet50")


@pytest.mark.parametrize("name", sorted(PROTOTXTS))
def test_shipped_architecture_is_the_published_prototxt(name):
    import gzip

    path = lookup(name).architecture
    packaged = gzip.decompress(
        (Path(senet.__file__).parent / path).read_bytes())
    assert packaged == require_shared("senet_prototxt", PROTOTXTS[name] + ".prototxt").read_bytes()


def test_architecture_mismatch_names_the_layer():
    from senet.errors import ShapeError
    from senet.manifest import check_architecture

    r50 = load_manifest()["se_resnet50"]
    net = load_net(prototxt=str(Path(senet.__file__).parent / r50.architecture),
                   weights_optional=True)
    check_architecture(net, r50)  # matches itself
    with pytest.raises(ShapeError, match=r"not se_resnext50_32x4d: layer #3 with weights is "
                                         r"'conv2_1_1x1_reduce' \[64x64x1x1\], .* \[128x64x1x1\]"):
        check_architecture(net, load_manifest()["se_resnext50_32x4d"])
    with pytest.raises(ShapeError, match="not senet154"):
        check_architecture(net, load_manifest()["senet154"])


def test_a_manifest_file_or_object_is_passed_not_installed(tmp_path):
    """lookup and recognise know exactly the models of the manifest they are given."""
    model = write_colour_net(tmp_path)
    entry = colour_entry(model)
    net = load_net(str(model))
    path = write_manifest(tmp_path, entry)
    from_file = load_manifest(path)
    assert from_file == with_entries(entry) and from_file["colour_nn"] == entry
    for known in (from_file, with_entries(entry)):
        assert lookup("colour_nn", known) == entry and recognise(net, known) == entry
        assert lookup("SE-ResNet-50", known) == load_manifest()["se_resnet50"]
    assert recognise(net) is None
    with pytest.raises(UsageError, match="unknown model 'colour_nn'"):
        lookup("colour_nn")
    only = {"colour_nn": entry}
    with pytest.raises(UsageError, match="known: colour_nn"):
        lookup("se_resnet50", only)
    with pytest.raises(UsageError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("models: {x: {aliases: []}}\n")
    with pytest.raises(UsageError, match="not a model manifest"):
        load_manifest(tmp_path / "bad.yaml")
