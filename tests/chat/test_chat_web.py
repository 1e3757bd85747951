"""``cellrlhf serve``: the gradio app driven in a real headless Chromium, and its upload guard."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.tiny_cell_model import TARGETS

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_uploads_outside_gradios_folder_are_refused(tmp_path):
    pytest.importorskip("gradio")
    from cellrlhf.chat.web import UploadRejected, _checked_upload

    uploads = tmp_path / "gradio"
    (uploads / "abc").mkdir(parents=True)
    good = uploads / "abc" / "cells.h5ad"
    good.write_bytes(b"x")
    assert _checked_upload(str(good), uploads) == good.resolve()
    outside = tmp_path / "secret.h5ad"
    outside.write_bytes(b"x")
    for bad, message in [
        (str(outside), "only files uploaded"),
        (str(uploads / "abc" / ".." / ".." / "secret.h5ad"), "only files uploaded"),
        ("/etc/passwd", "only files uploaded"),
        ("http://example.org/x.h5ad", "not URLs"),
        ("", "no file"),
    ]:
        with pytest.raises(UploadRejected, match=message):
            _checked_upload(bad, uploads)
    (uploads / "abc" / "notes.txt").write_text("x")
    with pytest.raises(UploadRejected, match="h5ad"):
        _checked_upload(str(uploads / "abc" / "notes.txt"), uploads)


def test_serve_cli_help_names_the_safe_defaults(capsys):
    from cellrlhf.chat.web import cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 127.0.0.1)" in out and "serves this machine only" in out
    assert "--max-upload-mb" in out and "--no-example" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_app(lm):
    pytest.importorskip("gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from cellrlhf.chat.web import build_app, launch_app

    demo = build_app(lm, max_new_tokens=24)
    port = _free_port()
    launch_app(demo, port=port, max_upload_mb=50, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.browser
@pytest.mark.slow
def test_web_app_in_chromium(served_app, chromium_page, pbmc, tmp_path):
    import anndata as ad

    page = chromium_page
    page.goto(served_app)
    # example cells: map and table
    page.click("#example-btn")
    page.wait_for_selector("#data-info:has-text('700 cells x 765 genes')")
    page.wait_for_selector("#cell-map svg path, #cell-map canvas")
    # pick a cell by clicking its row in the table
    barcode = str(pbmc.obs_names[3])
    page.locator("#cell-table").get_by_text(barcode, exact=True).click()
    page.wait_for_selector(f"#cell-info:has-text('Selected cell {barcode}')")
    # ask, and read the streamed answer
    page.fill("#question textarea", "What cell type is this cell?")
    page.click("#ask-btn")
    bot = page.locator("#chatbot .bot").last
    bot.wait_for()
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot .bot'); "
        "return b.length && b[b.length - 1].innerText.trim().length > 0; }"
    )
    page.wait_for_selector("#chatbot .pending", state="detached")
    answer = bot.inner_text().strip()
    assert answer and answer != "(empty answer)"
    # predict a perturbation: plot, gene table, downloadable AnnData
    page.fill("#targets textarea", TARGETS[0])
    page.click("#predict-btn")
    page.wait_for_selector("#prediction-info:has-text('valid gene fraction')")
    page.wait_for_selector("#response-plot img")
    link = page.locator("#download a").first
    link.wait_for()
    shown = "".join(page.locator("#download").inner_text().split())
    assert f"prediction_{TARGETS[0]}.h5ad" in shown
    with page.expect_download() as download_info:
        link.click()
    downloaded = tmp_path / "downloaded.h5ad"
    download_info.value.save_as(downloaded)
    predicted = ad.read_h5ad(downloaded)
    assert predicted.n_vars == 765 and predicted.obs["perturbation"].iloc[0] == TARGETS[0]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_web_example.png"), full_page=True)
    # an upload of the user's own .h5ad replaces the example
    upload = tmp_path / "my_cells.h5ad"
    pbmc[:40].write_h5ad(upload)
    page.set_input_files("#upload input[type=file]", str(upload))
    page.wait_for_selector("#data-info:has-text('my_cells.h5ad')")
    page.wait_for_selector("#data-info:has-text('40 cells x 765 genes')")
    page.fill("#cell-box textarea", "NOT-A-CELL")
    page.click("#select-btn")
    page.wait_for_selector("text=no cell named 'NOT-A-CELL'")
    page.wait_for_timeout(800)  # let the warning finish fading in
    page.screenshot(path=str(ARTIFACTS / "chat_web_upload_error.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.slow
def test_web_upload_size_limit(lm, chromium_page, pbmc, tmp_path):
    pytest.importorskip("gradio")
    from cellrlhf.chat.web import build_app

    demo = build_app(lm, example=False)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        max_file_size=20 * 1024,
    )
    try:
        big = tmp_path / "big.h5ad"
        pbmc[:100].write_h5ad(big)
        assert big.stat().st_size > 20 * 1024
        page = chromium_page
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#upload input[type=file]", str(big))
        page.wait_for_selector("text=exceed the maximum allowed size")
        assert "No data loaded." in page.locator("#data-info").inner_text()
    finally:
        demo.close()


@pytest.fixture
def gene_free_answers(lm, monkeypatch):
    """The model answers without a single gene (an invalid prediction)."""
    from cellrlhf.sampling import Completion

    def generate(conversations, settings, **kwargs):
        return [Completion("No changes </pert>", 0.0, 3, True) for _ in conversations]

    monkeypatch.setattr(lm.generator, "generate", generate)


def _upload(page, adata, path, n_cells: int):
    adata.write_h5ad(path)
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_selector(f"#data-info:has-text('{path.name}')")
    page.wait_for_selector(f"#data-info:has-text('{n_cells} cells')")


@pytest.mark.browser
@pytest.mark.slow
def test_web_prediction_from_controls_with_the_measured_response(
    served_app, chromium_page, pbmc, tmp_path
):
    from cell_screens import CONTEXTS, MEASURED, perturbed_screen

    screen = perturbed_screen(pbmc)
    page = chromium_page
    page.goto(served_app)
    _upload(page, screen, tmp_path / "screen.h5ad", screen.n_obs)
    page.wait_for_selector("#data-info:has-text('Perturbation column')")
    # a perturbed cell is selected: the app says predictions start from the controls
    treated = int(np.flatnonzero(screen.obs["perturbation"] == MEASURED)[0])
    page.fill("#cell-box textarea", str(treated))
    page.click("#select-btn")
    page.wait_for_selector("#cell-info:has-text('this cell is not a control')")
    page.fill("#targets textarea", MEASURED)
    page.click("#predict-btn")
    info = page.locator("#prediction-info")
    info.locator("text=Measured").wait_for()
    text = info.inner_text()
    context = screen.obs["cell_type"].iloc[treated]
    assert f"{MEASURED} in {context}" in text and "control cell(s) of this context" in text
    assert "pearson_delta" in text and "mae_delta" in text
    page.wait_for_selector("#response-plot img")
    headers = page.locator("#genes-table thead").inner_text()
    assert "measured" in headers and "predicted" in headers
    assert context in CONTEXTS
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_web_measured_response.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.slow
def test_web_invalid_prediction_and_low_vocabulary(
    served_app, chromium_page, pbmc, tmp_path, gene_free_answers
):
    from cell_screens import CONTEXTS, MEASURED, low_vocabulary_cells, perturbed_screen

    page = chromium_page
    page.goto(served_app)
    screen = perturbed_screen(pbmc)
    _upload(page, screen, tmp_path / "screen.h5ad", screen.n_obs)
    page.fill("#context textarea", CONTEXTS[0])
    page.fill("#targets textarea", MEASURED)
    page.click("#predict-btn")
    page.wait_for_selector("#prediction-info:has-text('Invalid prediction')")
    assert "valid gene fraction 0.00" in page.locator("#prediction-info").inner_text()
    assert page.locator("#response-plot img").count() == 0  # nothing drawn as an effect
    assert page.locator("#genes-table tbody td").count() == 0 or "SPI1" not in (
        page.locator("#genes-table").inner_text()
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_web_invalid_prediction.png"), full_page=True)
    # data sharing few genes with the model: a warning on the page (a fresh session)
    page.reload()
    _upload(page, low_vocabulary_cells(pbmc, keep=20), tmp_path / "novel.h5ad", 60)
    warning = page.locator("#data-info")
    assert "only 20 of the data's 765 genes (3%)" in warning.inner_text()
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "chat_web_low_vocabulary.png"), full_page=True)
