"""README's table of supported layer types is the registry's (`layer_table`), so it cannot drift
from what senet converts. `python -m tests.converter.test_layer_table` rewrites it."""

from __future__ import annotations

import re
import sys

from senet.converter.layers import converter_for, layer_table
from tests.conftest import REPO

README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- layer-table:start -->\n)(.*?)(<!-- layer-table:end -->)", re.S)


def test_readme_layer_table_is_the_registry():
    match = BLOCK.search(README.read_text())
    assert match, "README.md lacks the layer-table markers"
    assert match.group(2) == layer_table(), \
        "README's layer table is stale: run python -m tests.converter.test_layer_table"


def test_table_lists_each_type_with_its_origin():
    rows = [line.split(" | ") for line in layer_table().splitlines()[2:]]
    for row in rows:
        caffe_type = row[0].lstrip("| ")
        assert converter_for(caffe_type) is not None, caffe_type
    origins = {row[0].lstrip("| "): row[1] for row in rows}
    assert origins["Convolution"] == "BVLC Caffe"
    assert origins["Axpy"].startswith("SENet")


if __name__ == "__main__":
    text = README.read_text()
    README.write_text(BLOCK.sub(lambda m: m.group(1) + layer_table() + m.group(3), text))
    sys.exit(0)
