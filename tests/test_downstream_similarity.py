"""Cosine nearest-neighbour search: exact search against brute force, faiss backends, edge cases."""

import json

import numpy as np
import pytest

from astropt_hf.downstream.similarity import CosineIndex, benchmark_knn, exact_cosine_knn, normalise_rows


def _brute_force(catalogue, queries, k):
    unit = catalogue / np.linalg.norm(catalogue, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], np.sort(scores, axis=1)[:, ::-1][:, :k]


def test_exact_search_matches_brute_force_across_blocks():
    rng = np.random.default_rng(1)
    catalogue = rng.normal(size=(503, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    expected_index, expected_score = _brute_force(catalogue, queries, 7)
    # Small blocks force the running top-k merge across catalogue blocks and several query blocks.
    index, score = exact_cosine_knn(normalise_rows(catalogue), normalise_rows(queries), 7, query_block=10, catalogue_block=64)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(score, expected_score, atol=1e-5)


def test_each_row_finds_itself_first_and_scale_does_not_matter():
    rng = np.random.default_rng(2)
    catalogue = rng.normal(size=(200, 8)).astype(np.float32)
    index = CosineIndex.build(catalogue)
    found, scores = index.neighbours_of(range(200), k=3)
    np.testing.assert_array_equal(found[:, 0], np.arange(200))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    # cosine similarity ignores the length of the query vector
    scaled, _ = index.search(catalogue[5] * 1000.0, k=3)
    np.testing.assert_array_equal(scaled[0], found[5])


def test_k_larger_than_catalogue_and_bad_input():
    index = CosineIndex.build(np.eye(3, dtype=np.float32))
    found, _ = index.search(np.array([1.0, 0.0, 0.0]), k=10)
    assert found.shape == (1, 3) and found[0, 0] == 0
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones(4), k=1)
    with pytest.raises(ValueError, match="NaN"):
        CosineIndex.build(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="backend"):
        CosineIndex.build(np.eye(3), backend="annoy")
    with pytest.raises(IndexError, match="out of range"):
        index.neighbours_of([3], k=1)


@pytest.mark.parametrize("backend", ["faiss_flat", "faiss_hnsw"])
def test_faiss_backends_agree_with_exact(backend):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    catalogue = rng.normal(size=(300, 12)).astype(np.float32)
    exact, _ = CosineIndex.build(catalogue).neighbours_of(range(20), k=5)
    found, scores = CosineIndex.build(catalogue, backend).neighbours_of(range(20), k=5)
    np.testing.assert_array_equal(found[:, 0], np.arange(20))
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact)])
    assert recall >= (1.0 if backend == "faiss_flat" else 0.9)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_benchmark_reports_every_backend_with_full_recall_for_exact():
    pytest.importorskip("faiss")
    rows = benchmark_knn(sizes=(300,), dim=8, num_queries=10, k=5)
    assert [row["backend"] for row in rows] == ["exact", "faiss_flat", "faiss_hnsw"]
    assert rows[0]["recall_at_5"] == 1.0 and rows[1]["recall_at_5"] == 1.0
    assert all(row["query_seconds"] > 0 and row["build_seconds"] >= 0 for row in rows)


def test_neighbours_are_ranked_on_centred_embeddings_by_default():
    from astropt_hf.downstream.embedding_store import EmbeddingTable
    from astropt_hf.downstream.similarity import find_neighbours

    rng = np.random.default_rng(0)
    # a large direction shared by every row (as pooled transformer embeddings have) plus small distinct parts
    distinct = rng.normal(size=(50, 16)).astype(np.float32)
    distinct[1] = distinct[0] + 0.05 * rng.normal(size=16).astype(np.float32)  # row 1 is row 0's twin
    embeddings = 100.0 + distinct
    table = EmbeddingTable(ids=np.array([f"g{i}" for i in range(50)]), embeddings=embeddings,
                           columns={"row": np.arange(50)}, metadata={})
    centred = find_neighbours(table, 5, query_index=0)
    centred_vectors = embeddings - embeddings.mean(axis=0)
    expected = _brute_force(centred_vectors, centred_vectors[:1], 6)[0][0]
    assert centred.ids[1] == "g1" and list(centred.positions) == list(expected)
    assert centred.scores[1] > 0.9 and centred.scores[-1] < 0.7  # centred cosines spread out
    raw = find_neighbours(table, 5, query_index=0, centre=False)
    assert raw.scores[1:].min() > 0.99  # raw cosines all near 1


def test_crossover_is_the_size_from_which_hnsw_stays_faster():
    from astropt_hf.downstream.similarity import knn_crossover

    def rows(size, exact, hnsw, build):
        return [{"size": size, "backend": "exact", "query_seconds": exact, "build_seconds": 0.0},
                {"size": size, "backend": "faiss_hnsw", "query_seconds": hnsw, "build_seconds": build}]

    measured = [*rows(1000, 1e-4, 2e-4, 0.1), *rows(10_000, 5e-4, 1e-4, 1.0), *rows(100_000, 5e-3, 2e-4, 12.0)]
    found = knn_crossover(measured)
    assert found["size"] == 10_000
    assert found["break_even_queries"] == {1000: None, 10_000: 2500, 100_000: 2500}
    # a win below a loss is not a crossover: faster must hold for every larger catalogue
    assert knn_crossover([*rows(1000, 3e-4, 1e-4, 0.1), *rows(10_000, 1e-4, 2e-4, 1.0)])["size"] is None


def test_cli_benchmark_writes_rows_crossover_and_plot(tmp_path, capsys):
    pytest.importorskip("faiss")
    from downstream_helpers import load_script

    script = load_script("similarity_search")
    out, png = tmp_path / "knn.json", tmp_path / "knn.png"
    assert script.main(["--benchmark", "--benchmark_sizes", "200,400", "--benchmark_dim", "8", "--benchmark_queries", "5",
                        "--benchmark_output", str(out), "--benchmark_plot", str(png)]) == 0  # fmt: skip
    stored = json.loads(out.read_text())
    assert [(r["size"], r["backend"]) for r in stored["rows"]] == [
        (size, backend) for size in (200, 400) for backend in ("exact", "faiss_flat", "faiss_hnsw")]
    assert set(stored["crossover"]) == {"query", "batched_query"}
    assert set(stored["crossover"]["batched_query"]["break_even_queries"]) == {"200", "400"}
    assert "| 400 | faiss_hnsw |" in capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_finds_the_query_first_and_draws_its_neighbours(tmp_path, capsys):
    from downstream_helpers import dataset_flags, load_script, save_tiny_model

    from astropt_hf.downstream.embedding_store import read_embeddings

    model_dir = save_tiny_model(tmp_path / "model")
    output = tmp_path / "emb.parquet"  # the test split: every galaxy distinct, no exact duplicates
    extract = load_script("extract_embeddings")
    assert extract.main(["--model", str(model_dir), "--output", str(output), *dataset_flags()]) == 0
    table = read_embeddings(output)
    script = load_script("similarity_search")
    for query in (0, 7, 23):
        png = tmp_path / f"n{query}.png"
        assert script.main(["--embeddings", str(output), "--query_index", str(query), "--k", "4", "--output", str(png)]) == 0
        lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
        assert lines[0][2] == table.ids[query] and float(lines[0][1]) == pytest.approx(1.0)
        assert len(lines) == 5 and len({line[2] for line in lines}) == 5
        scores = [float(line[1]) for line in lines[1:]]
        assert scores == sorted(scores, reverse=True)
        assert png.stat().st_size > 1000
    # the same query by id, through the faiss index
    pytest.importorskip("faiss")
    assert script.main(["--embeddings", str(output), "--query_id", str(table.ids[7]), "--k", "4", "--backend",
                        "faiss_flat", "--output", str(tmp_path / "f.png")]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines()[0].split()[2] == table.ids[7]
