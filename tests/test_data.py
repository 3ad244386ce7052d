import json

import pytest

from alignment.config import DataConfig
from alignment.data import (
    IGNORE_INDEX,
    RowCheck,
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


def test_text_rows_are_standard_format_and_message_rows_conversational(micro_model, tmp_path):
    """Text prompt/completion: joined as text plus EOS, no template, loss on the completion only (ids
    built by hand from the tokenizer); a message-list prompt: the chat template, as before."""
    tokenizer = load_tokenizer(micro_model / "model")
    rows = [{"prompt": "Review Y.", "completion": " Y is bad."},
            {"prompt": [{"role": "user", "content": "Review Y."}], "completion": "Y is bad."}]
    path = write_jsonl(tmp_path / "pc.jsonl", rows)
    standard, chat = load_sft_examples(path, tokenizer, DataConfig(train=str(path)))
    prompt = tokenizer("Review Y.")["input_ids"]
    completion = tokenizer.encode(" Y is bad.", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert standard.input_ids == prompt + completion
    assert standard.labels == [IGNORE_INDEX] * len(prompt) + completion
    assert tokenizer.decode(chat.input_ids) == "<|user|>Review Y.<|end|><|assistant|>Y is bad.<|end|>"
    assert check_sft_rows(path, DataConfig(train=str(path))) == RowCheck(rows=2, conversational=1)


def trl_trainer_dataset(kind: str, micro_model, rows: list[dict], tmp_path):
    """TRL 1.16's own tokenisation of ``rows`` (its trainer's processed train dataset), as the yardstick."""
    import datasets
    import trl

    from alignment.models import load_causal_lm

    tokenizer = load_tokenizer(micro_model / "model")
    model = load_causal_lm(micro_model / "model")
    common = {"output_dir": str(tmp_path / kind), "report_to": [], "bf16": False, "use_cpu": True,
              "max_length": None, "dataset_num_proc": None}
    dataset = datasets.Dataset.from_list(rows)
    if kind == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=dataset,
                                 processing_class=tokenizer)
    elif kind == "dpo":
        trainer = trl.DPOTrainer(model=model, ref_model=load_causal_lm(micro_model / "model"),
                                 args=trl.DPOConfig(**common), train_dataset=dataset, processing_class=tokenizer)
    return list(trainer.train_dataset)


TEXT_PAIRS = [{"prompt": "Review the film Dune.", "chosen": " Dune is great.", "rejected": " Dull."},
              {"prompt": "Review Y", "chosen": " Y is bad", "rejected": " Y is a film I liked a lot"}]
CHAT_PAIRS = [{"prompt": [{"role": "user", "content": row["prompt"]}],
               "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
               "rejected": [{"role": "assistant", "content": row["rejected"].strip()}]} for row in TEXT_PAIRS]


@pytest.mark.parametrize("rows", [TEXT_PAIRS, CHAT_PAIRS], ids=["standard", "conversational"])
def test_sft_tokenisation_equals_trl_sft_trainer(micro_model, tmp_path, rows):
    sft_rows = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in rows]
    path = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    ours = load_sft_examples(path, load_tokenizer(micro_model / "model"), DataConfig(train=str(path), max_length=512))
    theirs = trl_trainer_dataset("sft", micro_model, sft_rows, tmp_path)
    for mine, trl_row in zip(ours, theirs, strict=True):
        assert mine.input_ids == trl_row["input_ids"]
        assert mine.labels == trl_row["labels"]  # TRL's -100 is our IGNORE_INDEX
        assert any(label == IGNORE_INDEX for label in mine.labels)  # the prompt is not learned


@pytest.mark.parametrize("rows", [TEXT_PAIRS, CHAT_PAIRS], ids=["standard", "conversational"])
def test_preference_tokenisation_equals_trl_dpo_trainer(micro_model, tmp_path, rows):
    from alignment.config import PreferenceDataConfig
    from alignment.preference_data import load_preference_pairs

    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    ours = load_preference_pairs(path, load_tokenizer(micro_model / "model"), PreferenceDataConfig(train=str(path)))
    theirs = trl_trainer_dataset("dpo", micro_model, rows, tmp_path)
    for pair, trl_row in zip(ours, theirs, strict=True):
        prompt = trl_row["prompt_ids"]
        for mine, response in ((pair.chosen, trl_row["chosen_ids"]), (pair.rejected, trl_row["rejected_ids"])):
            assert mine.input_ids == prompt + response
            assert mine.labels == [IGNORE_INDEX] * len(prompt) + response


def test_chat_rows_without_a_template_say_which_setting_to_use(micro_model, tmp_path):
    from alignment.chat_templates import CHATML

    tokenizer = load_tokenizer(micro_model / "model")
    tokenizer.chat_template = None
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}]}])
    with pytest.raises(AlignError, match=r"chat\.jsonl:1: .*no chat template.*chat_template"):
        load_sft_examples(path, tokenizer, DataConfig(train=str(path)))
    chatml = load_tokenizer(micro_model / "model", "chatml")
    assert chatml.chat_template == CHATML
    (example,) = load_sft_examples(path, chatml, DataConfig(train=str(path)))
    learned = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert chatml.decode(example.input_ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    assert chatml.decode(learned) == "Hello<|im_end|>\n"


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
