"""The ``neighbours`` decoder: per-gene lines plus the mean residual of similar training cells."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellrlhf.cell2text.decoder import ExpressionDecoder
from cellrlhf.cell2text.encoding import encode
from cellrlhf.cell2text.neighbour_decoding import NeighbourCells, line_values
from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.data.config import ConfigError, DecoderConfig

GENES = ("A", "B", "C")
INTERCEPT = np.array([3.0, 2.0, 4.0])
SLOPE = np.array([-1.0, -0.5, -3.0])


def _line(gene: int, rank: int) -> float:
    return float(np.float32(max(INTERCEPT[gene] + SLOPE[gene] * np.log10(rank + 1.0), 0.0)))


def _decoder(references: NeighbourCells) -> ExpressionDecoder:
    return ExpressionDecoder(
        GeneVocab(GENES), INTERCEPT, SLOPE, {"method": "neighbours"}, references
    )


def _adata(X, genes) -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.asarray(X, dtype=np.float32)))
    adata.var_names = list(genes)
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    return adata


def test_line_values_are_the_decoders_values_at_each_rank():
    values = line_values([0, 2, 3], [2, 0, 1], INTERCEPT, SLOPE)
    assert values.tolist() == pytest.approx([_line(2, 0), _line(0, 1), _line(1, 0)])


def test_a_sentence_takes_its_nearest_cells_residuals_exactly():
    # reference 0: "A B" measured 5 and 1; reference 1: "C" measured 2
    references = NeighbourCells([0, 2, 3], [0, 1, 2], [5.0, 1.0, 2.0], n_neighbors=1)
    matrix, report = _decoder(references).decode(["B A", "C", "A", "junk"])
    lines = np.array(
        [
            [_line(0, 1), _line(1, 0), 0.0],
            [0.0, 0.0, _line(2, 0)],
            [_line(0, 0), 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    residual_0 = np.array([5.0 - _line(0, 0), 1.0 - _line(1, 1), 0.0])
    residual_1 = np.array([0.0, 0.0, 2.0 - _line(2, 0)])
    expected = lines + np.array([residual_0, residual_1, residual_0, np.zeros(3)])
    expected[:3] = np.maximum(expected[:3], 0.0)
    np.testing.assert_allclose(matrix.toarray(), expected, rtol=1e-6, atol=1e-6)
    assert matrix.dtype == np.float32 and report.n_valid.tolist() == [2, 1, 1, 0]
    # "C" decodes to C's measured value: its own reference cell is its nearest
    assert matrix[1, 2] == pytest.approx(2.0)


def test_two_neighbours_average_and_a_row_without_genes_stays_empty():
    references = NeighbourCells([0, 1, 2], [0, 0], [4.0, 2.0], n_neighbors=5)  # k > cells
    matrix, _ = _decoder(references).decode(["A", ""])
    assert matrix[0, 0] == pytest.approx(3.0)  # line + mean(4 - line, 2 - line)
    assert matrix[1].nnz == 0


def test_references_on_their_lines_give_the_per_gene_decoder():
    indptr, genes = np.array([0, 3, 5, 6]), np.array([2, 0, 1, 1, 0, 2])
    on_line = line_values(indptr, genes, INTERCEPT, SLOPE)
    references = NeighbourCells(indptr, genes, on_line, n_neighbors=2)
    lines = ExpressionDecoder(GeneVocab(GENES), INTERCEPT, SLOPE, {"method": "per_gene"})
    sentences = ["C A B", "B", "A C", "B A C junk", ""]
    got = _decoder(references).decode(sentences)[0].toarray()
    np.testing.assert_allclose(got, lines.decode(sentences)[0].toarray(), atol=1e-6)


def test_fit_with_one_neighbour_reproduces_training_cells():
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 1.0, size=(40, 8)) * (rng.random((40, 8)) < 0.6)
    adata = _adata(X, [f"G{i}" for i in range(8)])
    decoder = ExpressionDecoder.fit(adata, method="neighbours", n_neighbors=1)
    assert decoder.method == "neighbours" and decoder.neighbours.n_cells == 40
    assert decoder.params["n_neighbors"] == 1 and decoder.params["reference_cells"] == 40
    sentences = encode(adata, key_added="s", copy=True).obs["s"].tolist()
    decoded = decoder.decode(sentences)[0].toarray()
    np.testing.assert_allclose(decoded, X, rtol=1e-5, atol=1e-5)
    lines = ExpressionDecoder.fit(adata, method="per_gene")
    np.testing.assert_array_equal(decoder.intercept, lines.intercept)
    assert np.abs(lines.decode(sentences)[0].toarray() - X).max() > 0.1  # lines alone cannot
    small = ExpressionDecoder.fit(adata, method="neighbours", reference_cells=10)
    assert small.neighbours.n_cells == 10 and small.neighbours.n_neighbors == 20


def test_batches_do_not_change_the_result():
    rng = np.random.default_rng(1)
    X = rng.gamma(2.0, 1.0, size=(30, 6)) * (rng.random((30, 6)) < 0.7)
    adata = _adata(X, [f"G{i}" for i in range(6)])
    decoder = ExpressionDecoder.fit(adata, method="neighbours", n_neighbors=3)
    sentences = ["G1 G2", "G5 G0 G3", "G4", "", "G2 G1 G0 G5"]
    whole = decoder.decode(sentences)[0]
    one_by_one = sp.vstack([decoder.decode([s], batch_size=1)[0] for s in sentences])
    assert (whole != one_by_one).nnz == 0


def test_save_load_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.gamma(1.5, 1.0, size=(25, 7)) * (rng.random((25, 7)) < 0.5)
    decoder = ExpressionDecoder.fit(_adata(X, [f"G{i}" for i in range(7)]), method="neighbours")
    path = decoder.save(tmp_path)
    payload = json.loads(path.read_text())
    assert payload["method"] == "neighbours" and payload["neighbours"]["n_neighbors"] == 20
    loaded = ExpressionDecoder.load(path)
    np.testing.assert_array_equal(loaded.neighbours.values, decoder.neighbours.values)
    sentences = ["G3 G1 G0", "G6", ""]
    assert (loaded.decode(sentences)[0] != decoder.decode(sentences)[0]).nnz == 0


def test_bad_reference_cells_and_options_are_refused():
    with pytest.raises(ValueError, match="indptr"):
        NeighbourCells([1, 2], [0], [1.0], 1)
    with pytest.raises(ValueError, match="must match"):
        NeighbourCells([0, 2], [0], [1.0], 1)
    with pytest.raises(ValueError, match="n_neighbors"):
        NeighbourCells([0, 1], [0], [1.0], 0)
    with pytest.raises(ValueError, match="reference cells exactly"):
        ExpressionDecoder(GeneVocab(GENES), INTERCEPT, SLOPE, {"method": "neighbours"})
    with pytest.raises(ConfigError, match="decoder.method"):
        DecoderConfig(method="knn")
    with pytest.raises(ConfigError, match="n_neighbors"):
        DecoderConfig(method="neighbours", n_neighbors=0)
