"""Federated LoRA fine-tuning of a causal LM (fl/lm/): corpus, tokenizer and tiny model, token
blocks, and the LoRA worker (adapters only travel, the base stays bit for bit, FFA-LoRA is exact)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from fl.datasets import DatasetError
from fl.federation import JobSpec, client_data, client_indices
from fl.lm.base import base_model_hash, load_model, load_tokenizer
from fl.lm.corpus import FAMILIES, PARTS, read_data_folder, read_jsonl, read_text_folder, stdlib_corpus
from fl.lm.data import family_names, folder_dataset, stdlib_dataset, text_dataset
from fl.lm.pretrain import RECORD, pretrain
from fl.lm.worker import LMWorker, LoRASpec
from fl.strategy import Update, build_strategy

BLOCK = 64
STEPS = 200  # about 5 s: a base model worth adapting (held-out perplexity about 55 of 512)
CPU = torch.device("cpu")
MAX_BLOCKS = 120  # of each family: 90 training blocks a client


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and two spin-waiting OpenMP threads beside
    any other busy process ran 10-20× slower here (pretraining took 4 minutes instead of 3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama and its tokenizer, pretrained for a few seconds."""
    out = tmp_path_factory.mktemp("lm") / "tiny"
    result = pretrain(out, steps=STEPS, seed=0, vocab_size=512, layers=2, hidden=64, heads=2, block_size=BLOCK,
                      batch_size=16, device="cpu", log=lambda line: None)
    return out, result


@pytest.fixture(scope="module")
def blocks(tiny):
    return stdlib_dataset(tiny[0], BLOCK, max_blocks=MAX_BLOCKS)


def make_job(**changes) -> JobSpec:
    job = JobSpec(dataset="text", model="tiny-stdlib-lm", strategy="fedavg", num_clients=2, rounds=3, local_epochs=1,
                  lr=3e-3, batch_size=8, momentum=0.0, partition="pathological", classes_per_client=1,
                  dirichlet_alpha=0.5, train_fraction=0.75, head_layers=1, seed=7)
    return replace(job, **changes)


def clients(dataset, job):
    """Every client's data by the job's own partition: one family each (pathological, 1 class)."""
    return [client_data(dataset, split, CPU) for split in client_indices(dataset.y.numpy(), job)]


def split(worker, state):
    return ({k: state[k] for k in worker.shared_keys}, {k: state[k] for k in worker.personal_keys})


def perplexity(result) -> float:
    return float(torch.exp(torch.tensor(result.loss_sum / result.num_samples)))


# --- corpus ------------------------------------------------------------------------------------

def test_corpus_is_the_stdlib_docstrings_in_families():
    texts = stdlib_corpus()
    assert texts == stdlib_corpus()  # deterministic
    families = family_names(texts)
    assert len(families) >= 6 and set(families) == set(FAMILIES)
    docs = {text for _, text in texts}
    assert any(text.startswith("Serialize ``obj`` to a JSON formatted ``str``") for text in docs)  # json.dumps
    assert ("internet", next(t for t in docs if t.startswith("Parse a URL into 6 components"))) in texts
    assert len(docs) == len(texts) > 3000  # each docstring once
    parts = {part: {text for _, text in stdlib_corpus(part)} for part in PARTS}
    assert set.union(*parts.values()) == docs
    assert sum(len(p) for p in parts.values()) == len(docs)  # the parts are disjoint
    with pytest.raises(ValueError, match="unknown corpus part"):
        stdlib_corpus("test")


def test_readers_parse_a_nodes_own_folder(tmp_path):
    records = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
               {"instruction": "Say hello.", "output": "Hello!"}]
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "notes.txt").write_text("A plain text note.\n")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "ignored.md").write_text("not read")

    with_input, without_input = read_jsonl(tmp_path / "tasks.jsonl")
    assert "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5" in with_input
    assert "### Input:" not in without_input and without_input.endswith("### Response:\nHello!")
    assert read_text_folder(tmp_path) == ["A plain text note."]
    assert read_data_folder(tmp_path) == [with_input, without_input, "A plain text note."]

    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{"instruction": "no output"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: .*lacks 'output'"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: expected a JSON object"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError, match="does not exist"):
        read_data_folder(tmp_path / "missing")


# --- the pretrained base model -----------------------------------------------------------------

def test_pretrained_model_loads_offline_and_is_pinned(tiny, tmp_path):
    path, result = tiny
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert {"config.json", "model.safetensors", "tokenizer.json", RECORD} <= {p.name for p in path.iterdir()}
    assert result.steps == STEPS and result.heldout_perplexity < 100  # uniform over the vocabulary: 512
    tokenizer = load_tokenizer(path)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    text = "Return the JSON representation of obj."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: lossless
    model = load_model(path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert base_model_hash(path) == result.base_model_hash == base_model_hash(path)

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert base_model_hash(copy) == result.base_model_hash  # the folder's name and place do not count
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert base_model_hash(copy) != result.base_model_hash
    with pytest.raises(DatasetError, match="holds no model"):
        load_model(tmp_path / "nowhere")


# --- token blocks --------------------------------------------------------------------------------

def test_blocks_never_mix_families(tiny, tmp_path):
    texts = [("b_zeds", "zzz zzz zzz " * 40), ("a_exes", "xxx xxx " * 50), ("b_zeds", "zz zz " * 30),
             ("a_exes", "xx " * 70)]
    dataset = text_dataset(tiny[0], texts, BLOCK)
    tokenizer = load_tokenizer(tiny[0])
    assert dataset.name == "text" and dataset.num_classes == 2
    assert dataset.x.dtype == dataset.y.dtype == torch.int64 and dataset.x.shape[1] == BLOCK
    assert set(dataset.y.tolist()) == {0, 1}
    for block, label in zip(dataset.x, dataset.y):
        letters = set(tokenizer.decode(block, skip_special_tokens=True).replace(" ", ""))
        assert letters == ({"x"} if label == 0 else {"z"})  # labels follow sorted family names

    (tmp_path / "a.txt").write_text("Some text of my own. " * 40)
    own = folder_dataset(tiny[0], tmp_path, BLOCK)
    assert own.num_classes == 1 and len(own) > 0 and set(own.y.tolist()) == {0}


def test_stdlib_dataset_partitions_by_family(blocks):
    assert blocks.num_classes == len(FAMILIES)
    counts = torch.bincount(blocks.y).tolist()
    assert len(counts) == len(FAMILIES) and max(counts) == MAX_BLOCKS and min(counts) > 0  # max_blocks of each
    job = make_job(num_clients=4, classes_per_client=2)
    for split_ in client_indices(blocks.y.numpy(), job):
        assert len(set(blocks.y[torch.from_numpy(split_.train)].tolist())) <= 2


# --- the LoRA worker -----------------------------------------------------------------------------

def test_worker_shares_adapters_only(tiny):
    worker = LMWorker(make_job(), tiny[0], LoRASpec(), CPU)
    state = worker.model.full_state()
    assert list(state) == list(get_peft_model_state_dict(worker.model.peft))  # PEFT's own adapter keys
    assert all("lora_" in key for key in state) and worker.shared_keys == list(state) and not worker.personal_keys
    assert all(t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad for t in state.values())
    again = LMWorker(make_job(), tiny[0], LoRASpec(), CPU).model.full_state()
    assert all(torch.equal(state[k], again[k]) for k in state)  # the initial adapters come from the seed

    fedper = LMWorker(make_job(strategy="fedper"), tiny[0], LoRASpec(), CPU)
    assert fedper.personal_keys and all(".layers.1." in k for k in fedper.personal_keys)  # the last block
    assert all(".layers.0." in k for k in fedper.shared_keys)
    assert LMWorker(make_job(strategy="local"), tiny[0], LoRASpec(), CPU).shared_keys == []
    with pytest.raises(ValueError, match="head_layers=2"):
        LMWorker(make_job(strategy="fedper", head_layers=2), tiny[0], LoRASpec(), CPU)


def test_training_leaves_the_base_model_bit_for_bit(tiny, blocks):
    job = make_job()
    worker = LMWorker(job, tiny[0], LoRASpec(), CPU)
    base_before = {n: p.detach().clone() for n, p in worker.model.peft.named_parameters() if "lora_" not in n}
    state = worker.model.full_state()
    result = worker.train_round(0, clients(blocks, job)[0], 1, *split(worker, state), local_eval=True)
    base_after = dict(worker.model.peft.named_parameters())
    assert base_before and all(torch.equal(base_before[n], base_after[n]) for n in base_before)
    assert any(not torch.equal(result.shared[k], state[k]) for k in worker.shared_keys)  # the adapters trained
    assert result.local_eval.num_samples == clients(blocks, job)[0].num_test * (BLOCK - 1)

    with pytest.raises(ValueError, match="unknown training option"):
        worker.train_round(0, clients(blocks, job)[0], 1, *split(worker, state), config={"lr_boost": "2"})
    with pytest.raises(ValueError, match="DP-SGD"):
        worker.train_round(0, clients(blocks, job)[0], 1, *split(worker, state),
                           config={"dpsgd_clip": "1.0", "dpsgd_noise": "1.0"})


def run_rounds(job, model_path, lora, dataset, rounds):
    """``rounds`` rounds of two workers (one a client, on different families) aggregated by the
    sample-weighted mean; returns the workers, the data, each round's results and the global
    shared state after every round (the initial one first)."""
    data = clients(dataset, job)
    workers = [LMWorker(job, model_path, lora, CPU) for _ in data]
    shared, personal = split(workers[0], workers[0].model.full_state())
    personals = [personal] * len(workers)
    strategy = build_strategy(job.strategy, "mean")
    history, results = [shared], []
    for round_number in range(1, rounds + 1):
        results.append([w.train_round(i, d, round_number, shared, personals[i])
                        for i, (w, d) in enumerate(zip(workers, data))])
        personals = [r.personal for r in results[-1]]
        shared = strategy.aggregate(shared, [Update(r.shared, r.stats.num_samples) for r in results[-1]])
        history.append(shared)
    return workers, data, personals, history, results


def test_federated_rounds_lower_the_heldout_perplexity(tiny, blocks):
    job = make_job()
    workers, data, personals, history, results = run_rounds(job, tiny[0], LoRASpec(), blocks, rounds=3)
    assert len({int(d.y_train[0]) for d in data}) == 2  # two families
    for i, (worker, client) in enumerate(zip(workers, data)):
        before = perplexity(worker.evaluate(i, client, history[0], personals[i]))
        after = perplexity(worker.evaluate(i, client, history[-1], personals[i]))
        assert after < 0.97 * before, (i, before, after)

    # plain FedAvg of A and B is not the mean of the updates B·A: the reason for FFA-LoRA
    updates = results[0]
    key_b = next(k for k in workers[0].shared_keys if ".lora_B." in k)
    key_a = key_b.replace(".lora_B.", ".lora_A.")
    weights = [r.stats.num_samples for r in updates]
    mean_of_products = sum(w * (r.shared[key_b] @ r.shared[key_a]) for w, r in zip(weights, updates)) / sum(weights)
    assert not torch.allclose(history[1][key_b] @ history[1][key_a], mean_of_products, atol=1e-6)


def test_ffa_lora_freezes_a_and_averages_exactly(tiny, blocks):
    job = make_job()
    workers, data, personals, history, results = run_rounds(job, tiny[0], LoRASpec(variant="ffa"), blocks, rounds=2)
    initial = workers[0].model.full_state()
    assert workers[0].shared_keys and all(".lora_B." in k for k in workers[0].shared_keys)
    assert workers[0].personal_keys and all(".lora_A." in k for k in workers[0].personal_keys)
    for worker, personal in zip(workers, personals):
        assert worker.shared_keys == workers[0].shared_keys
        for key in worker.personal_keys:  # A: the seeded initial value on every node, untouched by training
            assert torch.equal(personal[key], initial[key])
            assert torch.equal(worker.model.full_state()[key], initial[key])
    updates = results[-1]
    weights = [r.stats.num_samples for r in updates]
    for key_b in workers[0].shared_keys:
        a = initial[key_b.replace(".lora_B.", ".lora_A.")]
        mean_of_products = sum(w * (r.shared[key_b] @ a) for w, r in zip(weights, updates)) / sum(weights)
        torch.testing.assert_close(history[-1][key_b] @ a, mean_of_products, rtol=1e-5, atol=1e-7)
    before = perplexity(workers[0].evaluate(0, data[0], history[0], personals[0]))
    assert perplexity(workers[0].evaluate(0, data[0], history[-1], personals[0])) < before


# peft 0.21 calls a name transformers 5 deprecates
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_global_adapter_saves_as_a_peft_adapter(tiny, tmp_path):
    worker = LMWorker(make_job(), tiny[0], LoRASpec(rank=4), CPU)
    state = {k: v + 0.01 for k, v in worker.model.full_state().items()}
    worker.save_adapter(tmp_path / "adapter", *split(worker, state))
    loaded = PeftModel.from_pretrained(load_model(tiny[0]), tmp_path / "adapter")
    saved = get_peft_model_state_dict(loaded)
    assert list(saved) == list(state) and all(torch.equal(saved[k], state[k]) for k in state)
