"""Measured evidence in the prompts of ``predict_perturbation``, ``perturbation_effect`` and the
chat session: the model directory's ``evidence_index.json`` by default, a given index or
directory, ``evidence=False`` for none; the block is the one a training prompt showed."""

from __future__ import annotations

import logging
import shutil

import pytest

from cellrlhf.data.evidence_config import EvidenceConfig, EvidenceError
from cellrlhf.data.evidence_index import AverageText, EvidenceIndex, MeasuredUnit
from cellrlhf.data.evidence_phrases import load_evidence_phrases
from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME
from tests.fixtures.tiny_cell_model import TARGETS

HEADER = "Measured evidence (pseudo-bulks of training cells):"
CONTEXT = "CD14+ Monocyte"
SPI1, CD79A, NKG7 = TARGETS


def _index() -> EvidenceIndex:
    """Two singles measured in one context; their combination is not."""
    units = {
        (SPI1, CONTEXT): MeasuredUnit(f"<cell> {SPI1} LYZ </cell>", ("train",), (SPI1,)),
        (CD79A, CONTEXT): MeasuredUnit(f"<cell> {CD79A} CD74 </cell>", ("train",), (CD79A,)),
    }
    return EvidenceIndex(
        EvidenceConfig(kinds=("average_response", "components")),
        load_evidence_phrases(),
        units,
        {CONTEXT: ("train",)},
        {CONTEXT: AverageText("<cell> LYZ CD74 </cell>", 2)},
        {
            (SPI1, CONTEXT): AverageText(f"<cell> {CD79A} CD74 </cell>", 1),
            (CD79A, CONTEXT): AverageText(f"<cell> {SPI1} LYZ </cell>", 1),
        },
    )


def _fresh(lm, index=None):
    """A CellLM on the session model's parts (its own once-only log state)."""
    from cellrlhf.chat import CellLM

    return CellLM(
        lm.model,
        lm.tokenizer,
        lm.vocab,
        lm.decoder,
        info=lm.info,
        data_manifest=lm.data_manifest,
        path=lm.path,
        evidence_index=index,
    )


@pytest.fixture
def captured(monkeypatch):
    """Record the conversations handed to a CellLM's sampler (answers are still generated)."""

    def capture(model):
        seen: list = []
        original = model.generator.generate

        def generate(conversations, *args, **kwargs):
            seen.extend(conversations)
            return original(conversations, *args, **kwargs)

        monkeypatch.setattr(model.generator, "generate", generate)
        return seen

    return capture


def _user(conversation) -> str:
    return next(m["content"] for m in conversation if m["role"] == "user")


def test_a_given_index_puts_the_training_block_before_the_prompt(lm, pbmc, captured, caplog):
    model, index = _fresh(lm), _index()
    seen = captured(model)
    with caplog.at_level(logging.INFO, logger="cellrlhf.chat"):
        pred = model.predict_perturbation(
            pbmc[:2], f"{CD79A}+{SPI1}", cell_context=CONTEXT, evidence=index
        )
    assert "trained without evidence blocks" in caplog.text  # the tiny model saw none
    assert "measured evidence in the prompts: the given EvidenceIndex" in caplog.text
    block = index.block(f"{CD79A}+{SPI1}", CONTEXT)[0]
    assert block.splitlines() == [
        HEADER,
        f"- average perturbed {CONTEXT} cell over 2 other measured perturbations: "
        "<cell> LYZ CD74 </cell>",
        f"- <pert> {CD79A} </pert> alone in {CONTEXT}: <cell> {CD79A} CD74 </cell>",
        f"- <pert> {SPI1} </pert> alone in {CONTEXT}: <cell> {SPI1} LYZ </cell>",
    ]
    plain = lm.prompts.perturbation_response(
        lm.encode(pbmc[:1]).sentences[0],
        [CD79A, SPI1],
        cell_context=CONTEXT,
        perturbation_type="CRISPRa",
        known={CD79A, SPI1},
    )
    assert len(seen) == 2
    assert seen[0][0] == plain[0]  # the system message is unchanged
    assert _user(seen[0]) == f"{block}\n\n{_user(plain)}"
    assert pred.adata.uns["cellrlhf_prediction"]["params"]["evidence"] == "the given EvidenceIndex"


def test_a_measured_single_leaves_itself_out_and_unmeasured_reads_not_measured(lm, pbmc, captured):
    model = _fresh(lm, _index())
    seen = captured(model)
    model.predict_perturbation(pbmc[:1], SPI1, cell_context=CONTEXT)
    model.predict_perturbation(pbmc[:1], f"{SPI1}+{NKG7}", cell_context="Dendritic")
    assert _user(seen[0]).startswith(
        f"{HEADER}\n- average perturbed {CONTEXT} cell over 1 other measured perturbations: "
        f"<cell> {CD79A} CD74 </cell>\n\n"
    )
    assert _user(seen[1]).startswith(
        f"{HEADER}\n- average perturbed Dendritic cell: not measured (no other perturbation "
        f"measured in this context)\n- <pert> {NKG7} </pert> alone in Dendritic: not measured\n"
        f"- <pert> {SPI1} </pert> alone in Dendritic: not measured\n\n"
    )


def test_evidence_false_removes_the_block(lm, pbmc, captured):
    model = _fresh(lm, _index())
    seen = captured(model)
    model.predict_perturbation(pbmc[:1], SPI1, cell_context=CONTEXT, evidence=False)
    lm_seen = captured(lm)
    lm.predict_perturbation(pbmc[:1], SPI1, cell_context=CONTEXT)  # no index: as before
    assert HEADER not in _user(seen[0]) and HEADER not in _user(lm_seen[0])
    assert _user(seen[0]) == _user(lm_seen[0])


def test_the_model_directory_carries_its_index(tiny_model_dir, tmp_path, pbmc, captured):
    from cellrlhf.chat import CellLM
    from cellrlhf.chat.session import ChatSession

    model_dir = tmp_path / "with_evidence"
    shutil.copytree(tiny_model_dir, model_dir)
    index = _index()
    index.save(model_dir / EVIDENCE_INDEX_FILENAME)
    model = CellLM.from_pretrained(model_dir)
    assert model.evidence_index.to_json() == index.to_json()
    seen = captured(model)
    model.perturbation_effect(SPI1, cell_context=CONTEXT, max_new_tokens=4)
    session = ChatSession(model)
    session.select_genes([SPI1, "LYZ", "CD74"])
    session.predict("control", cell_context=CONTEXT)
    assert _user(seen[0]).startswith(index.block(SPI1, CONTEXT)[0] + "\n\n")
    # the control prompt shows the context's evidence only
    assert _user(seen[1]).startswith(index.block("control", CONTEXT)[0] + "\n\n")
    saved = model.save_pretrained(tmp_path / "saved")
    assert EvidenceIndex.load(saved / EVIDENCE_INDEX_FILENAME).to_json() == index.to_json()
    # evidence given as a directory holding an index (here a model directory)
    assert model.evidence.choose(str(model_dir)).index.to_json() == index.to_json()


def test_bad_evidence_arguments_say_what_to_pass(lm, tmp_path):
    model = _fresh(lm)
    with pytest.raises(EvidenceError, match="evidence= takes None"):
        model.evidence.choose(3)
    with pytest.raises(EvidenceError, match="no evidence at"):
        model.evidence.choose(tmp_path)
    (tmp_path / EVIDENCE_INDEX_FILENAME).write_text("[]")
    with pytest.raises(EvidenceError, match="is not an evidence index"):
        model.evidence.choose(tmp_path)


def test_neighbours_use_the_recorded_gene_table_or_ask_for_one(lm, tmp_path):
    from cellrlhf.data.evidence_config import NeighbourConfig
    from cellrlhf.data.evidence_table import load_gene_table

    path = tmp_path / "genes.csv"
    path.write_text(f"symbol,d0,d1\n{SPI1},1,0\n{CD79A},0.9,0.1\n{NKG7},0,1\n")
    table = load_gene_table(path)
    base = _index()

    def index(table_path) -> EvidenceIndex:
        config = EvidenceConfig(kinds=("neighbours",), neighbours=NeighbourConfig(str(path), 1))
        return EvidenceIndex(
            config, base.phrases, base.units, base.controls, {}, {},
            gene_table_path=str(table_path), gene_table_sha256=table.sha256,
        )  # fmt: skip

    model = _fresh(lm)
    recorded = index(path)
    chosen = model.evidence.choose(recorded)
    assert chosen.block([NKG7], CONTEXT) == recorded.block(NKG7, CONTEXT, table)[0]
    assert f"<pert> {CD79A} </pert> (gene similarity" in chosen.block([NKG7], CONTEXT)
    chosen = model.evidence.choose(index(tmp_path / "moved.csv"))
    with pytest.raises(EvidenceError, match="pass it as gene_table="):
        chosen.block([NKG7], CONTEXT)
    assert chosen.block([], CONTEXT) == HEADER  # a control prompt shows no neighbours
    given = model.evidence.choose(index(tmp_path / "moved.csv"), gene_table=path)
    assert given.block([NKG7], CONTEXT) == chosen.index.block(NKG7, CONTEXT, table)[0]


def test_a_model_trained_with_evidence_but_without_its_index_is_warned_about(lm, caplog):
    from cellrlhf.chat import CellLM

    manifest = {**lm.data_manifest, "evidence": {"kinds": ["components"]}}
    model = CellLM(lm.model, lm.tokenizer, lm.vocab, lm.decoder, data_manifest=manifest)
    with caplog.at_level(logging.WARNING, logger="cellrlhf.chat"):
        assert model.evidence.choose(None) is None
        model.evidence.choose(_index())  # kinds unlike the training prompts'
    assert "has no evidence_index.json" in caplog.text
    assert "written unlike the model's training prompts" in caplog.text


def test_chat_and_serve_take_an_evidence_flag(tiny_model_dir, tmp_path, pbmc, captured, capsys):
    from cellrlhf.chat import repl, web

    evidence_dir = tmp_path / "measurements"
    evidence_dir.mkdir()
    index = _index()
    index.save(evidence_dir / EVIDENCE_INDEX_FILENAME)
    (options,) = repl.make_parser().parse_args_and_config(
        ["--model", str(tiny_model_dir), "--evidence", str(evidence_dir)]
    )
    model = options.load_model()
    assert model.evidence_index is None  # the model's own: none; the flag's is the default
    seen = captured(model)
    model.predict_perturbation(pbmc[:1], SPI1, cell_context=CONTEXT)
    assert _user(seen[0]).startswith(index.block(SPI1, CONTEXT)[0] + "\n\n")
    model.predict_perturbation(pbmc[:1], SPI1, cell_context=CONTEXT, evidence=False)
    assert HEADER not in _user(seen[1])  # a query's own choice still wins
    (options,) = web.make_parser().parse_args_and_config(
        ["--model", str(tiny_model_dir), "--evidence", "None"]
    )
    assert options.load_model().evidence.choose() is None
    status = repl.cli(["--model", str(tiny_model_dir), "--evidence", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert status == 2 and "cellrlhf chat: no evidence at" in err and "Traceback" not in err
