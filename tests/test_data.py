import json

import pytest

from alignment.config import DataConfig
from alignment.data import (
    IGNORE_INDEX,
    StepSampler,
    check_sft_rows,
    length_balanced_micro_batches,
    load_sft_examples,
    read_records,
    tokenize_sft,
)
from alignment.errors import AlignError
from alignment.models import load_tokenizer
from tests.conftest import write_jsonl


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": \n')
    with pytest.raises(AlignError, match=r"bad\.jsonl:3: not valid JSON"):
        read_records(path)


def test_row_missing_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "only"}])
    with pytest.raises(AlignError, match=r"rows\.jsonl:2: .*missing \['completion'\]"):
        check_sft_rows(path, DataConfig(train=str(path)))


def test_empty_dataset_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(AlignError, match="holds no rows"):
        read_records(path)


def test_parquet_and_datasets_dir_read_like_jsonl(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "rows_dir"))
    assert read_records(tmp_path / "rows.parquet") == rows
    assert read_records(tmp_path / "rows_dir") == rows


def test_labels_cover_exactly_the_assistant_turns(micro_model):
    tokenizer = load_tokenizer(micro_model / "model")
    messages = [
        {"role": "user", "content": "Review the movie X."},
        {"role": "assistant", "content": "X is great."},
        {"role": "user", "content": "Shorter?"},
        {"role": "assistant", "content": "Great."},
    ]
    example = tokenize_sft(tokenizer, messages, max_length=512)
    learned = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "X is great.<|end|>Great.<|end|>"
    assert [label for label in example.labels if label != IGNORE_INDEX] == learned


def test_prompt_completion_rows_become_chat(micro_model, tmp_path):
    tokenizer = load_tokenizer(micro_model / "model")
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Review Y.", "completion": "Y is bad."}])
    (example,) = load_sft_examples(path, tokenizer, DataConfig(train=str(path)))
    assert tokenizer.decode(example.input_ids) == "<|user|>Review Y.<|end|><|assistant|>Y is bad.<|end|>"


def test_sampler_is_a_pure_function_of_step():
    sampler = StepSampler(num_examples=10, global_batch_size=4, seed=3)
    assert sampler.steps_per_epoch == 2
    first_epoch = sampler.indices(0) + sampler.indices(1)
    assert len(set(first_epoch)) == 8
    assert sampler.indices(2) != sampler.indices(0)  # a new permutation per epoch
    assert StepSampler(10, 4, seed=3).indices(5) == sampler.indices(5)


def test_length_balanced_micro_batches_cover_the_batch_once_and_group_similar_lengths():
    indices = [10, 11, 12, 13, 14, 15, 16, 17]
    lengths = [5, 40, 7, 33, 5, 21, 12, 28]
    ranks = [length_balanced_micro_batches(indices, lengths, rank, 2, 2) for rank in range(2)]
    # sorted: 10,14 (5,5) | 12,16 (7,12) | 15,17 (21,28) | 13,11 (33,40); dealt 0,1,1,0
    assert ranks == [[[10, 14], [13, 11]], [[12, 16], [15, 17]]]
    assert sorted(i for chunks in ranks for chunk in chunks for i in chunk) == indices
    one_rank = length_balanced_micro_batches(indices, lengths, 0, 1, 4)
    assert one_rank == [[10, 14, 12, 16], [15, 17, 13, 11]]


def test_too_few_rows_for_one_batch():
    with pytest.raises(AlignError, match="fewer than train.global_batch_size"):
        StepSampler(num_examples=3, global_batch_size=4, seed=0)


def test_jsonl_roundtrip_unicode(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"prompt": "Café ☕", "completion": "ok"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_records(path)[0]["prompt"] == "Café ☕"
