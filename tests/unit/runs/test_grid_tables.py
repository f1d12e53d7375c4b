"""Grid axes and cells, and table files filled from cell summaries (``ser-experiment --grid`` / ``--table``)."""

from __future__ import annotations

import pytest

from ser_lightning.runs.grid import Axis, cell_dir, grid_cells, parse_grid, parse_only
from ser_lightning.runs.tables import fill, markdown, read_table_file


def test_a_grid_argument_is_an_axis_of_key_values():
    axis = parse_grid("data.label_source=primary,synthetic")
    assert axis == Axis("data.label_source", {"primary": ["--data.label_source", "primary"],
                                              "synthetic": ["--data.label_source", "synthetic"]})  # fmt: skip
    for bad in ("data.label_source", "=a,b", "k=a,,b", "k=a,a"):
        with pytest.raises(ValueError, match="grid"):
            parse_grid(bad)


def test_cells_are_the_product_first_axis_outermost_and_only_slices_them():
    axes = [parse_grid("a=1,2"), Axis("aug", {"w/ Aug.": [], "w/o Aug.": ["--config", "x.yaml"]})]
    cells = grid_cells(axes)
    assert [c.name for c in cells] == ["a=1,aug=w/ Aug.", "a=1,aug=w/o Aug.", "a=2,aug=w/ Aug.", "a=2,aug=w/o Aug."]
    assert cells[1].args == ["--a", "1", "--config", "x.yaml"]
    assert [cell_dir(c) for c in cells][:2] == ["a-1__aug-w_Aug.", "a-1__aug-w_o_Aug."]
    sliced = grid_cells(axes, parse_only(["aug=w/o Aug.", "a=2"]))
    assert [c.name for c in sliced] == ["a=2,aug=w/o Aug."]
    with pytest.raises(ValueError, match="not among"):
        grid_cells(axes, {"a": ["3"]})
    assert cell_dir(grid_cells([])[0]) == ""  # no axes: OUT itself


def _spec(tmp_path, body: str):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    return read_table_file(path)


TABLE = """
configs: [c.yaml]
grid:
  method: {base: [], new: [--x, "1"]}
tables:
  - title: T
    rows: method
    columns: [{label: Test1, prefix: test1}]
    relative_to: base
    metrics:
      - {key: js, header: JS, better: lower}
      - {key: f1, header: F1, better: higher, scale: 100, digits: 1}
"""


def test_a_table_reads_each_cells_summary_and_gives_relative_changes_positive_when_better(tmp_path):
    spec = _spec(tmp_path, TABLE)
    cells = grid_cells(spec.axes)
    summaries = {
        "method=base": {"metrics": {"test/test1/js": {"mean": 0.5, "std": 0.1, "n": 2},
                                    "test/test1/f1": {"mean": 0.4, "std": None, "n": 1}}},
        "method=new": {"metrics": {"test/test1/js": {"mean": 0.4, "std": None, "n": 1}}},
    }  # fmt: skip
    records = fill(spec.tables[0], cells, summaries)
    assert records[1]["mean"] == pytest.approx(40.0)  # scaled to percent
    text = markdown(spec.tables[0], records)
    assert "| base | 0.500 ± 0.100 | 40.0 | +0.0% | +0.0% |" in text
    assert "| new | 0.400 | n/a | +20.0% | n/a |" in text  # JS 0.5 -> 0.4 is 20 % better


def test_a_table_entry_must_select_one_cell(tmp_path):
    with pytest.raises(ValueError, match="leaves axes"):
        _spec(tmp_path, TABLE.replace("rows: method", "rows: [{label: base, prefix: audio}]"))
    with pytest.raises(ValueError, match="not a grid axis"):
        _spec(tmp_path, TABLE.replace("rows: method", "rows: nothing"))
    with pytest.raises(ValueError, match="stage"):
        _spec(tmp_path, TABLE + "stage: predict\n")
