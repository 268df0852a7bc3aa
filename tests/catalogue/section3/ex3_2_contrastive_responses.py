"""Exercise 3.2 — Generating contrastive responses

Wrong implementations of `generate_contrastive_responses` that `test_generate_contrastive_responses` must
reject, each declared where it is defined with the phrase its failure message must contain, and correct
implementations written another way, which must pass.
"""

from __future__ import annotations

from tests.catalogue import correct, mistake
from tests.catalogue.section3._shared import ref
from utils.chat import build_messages, format_prompt
from utils.generation import generate  # noqa: F401  (a name the tests replace with a fake)

construct_system_prompt = ref.construct_system_prompt  # the tests put the course's version here, as in a notebook


def _records_and_prompts(trait_data, trait_name, neg_name="helpful", neg_key="neg", idx_offset=0, polarities=("pos", "neg"),
                         reverse_questions=False):
    records, prompts = [], []
    for idx, pair in enumerate(trait_data["instruction"]):
        questions = trait_data["questions"][::-1] if reverse_questions else trait_data["questions"]
        for question in questions:
            for polarity in polarities:
                name = trait_name if polarity == "pos" else neg_name
                instruction = pair[polarity] if polarity == "pos" else pair[neg_key]
                sp = construct_system_prompt(name, instruction)
                records.append({"question": question, "system_prompt": sp, "instruction_idx": idx + idx_offset,
                                "polarity": polarity})
                prompts.append(build_messages(sp, question))
    return records, prompts


def _finish(records, answers, max_new_tokens, temperature):
    for r, a in zip(records, answers):
        r["response"] = a
        r["sampling"] = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    return records


@mistake("test_generate_contrastive_responses", "one call")
def gen_one_call_per_prompt(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = [generate(model, tokenizer, [p], max_new_tokens=max_new_tokens, temperature=temperature)[0] for p in prompts]
    return _finish(records, answers, max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "uses the 'pos' instruction")
def gen_neg_uses_pos_instruction(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, neg_key="pos")
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "assistant name")
def gen_neg_named_after_trait(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, neg_name=trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "0-based")
def gen_one_based_index(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, idx_offset=1)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "prompts")
def gen_pos_only(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, polarities=("pos",))
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "not the answer to its own prompt")
def gen_misaligned_answers(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return _finish(records, answers[::-1], max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "pass max_new_tokens and temperature")
def gen_ignores_temperature(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens), max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "sampling")
def gen_no_sampling_record(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    for r, a in zip(records, answers):
        r["response"] = a
    return records


@mistake("test_generate_contrastive_responses", "order")
def gen_reversed_questions(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, reverse_questions=True)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "forward passes")
def gen_batch_size_one(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=1)
    return _finish(records, answers, max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "never called")
def gen_model_generate_loop(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    from utils.chat import format_prompt

    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = []
    for p in prompts:
        ids = tokenizer(format_prompt(p, tokenizer), return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return _finish(records, answers, max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "it has no system prompt")
def gen_no_system_prompt(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, _ = _records_and_prompts(trait_data, trait_name)
    prompts = [build_messages(None, r["question"]) for r in records]
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "merged into the user message by hand")
def gen_system_merged_into_user(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, _ = _records_and_prompts(trait_data, trait_name)
    prompts = [build_messages(None, f"{r['system_prompt']}\n\n{r['question']}") for r in records]
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "record['sampling'] should be")
def gen_sampling_defaults(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return _finish(records, answers, 256, 0.7)


@mistake("test_generate_contrastive_responses", "changed the trait_data it was given")
def gen_mutates_trait_data(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    """Writes the trait's name into the trait_data it was given."""
    trait_data["trait"] = trait_name
    records, prompts = _records_and_prompts(trait_data, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


# Correct, written another way: each must pass.
@mistake("test_generate_contrastive_responses", "braces in an instruction or a question are text")
def gen_formats_instruction(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    """Writes the system prompt as one string and formats the name in: the instruction's braces meet format."""
    records, prompts = [], []
    for idx, pair in enumerate(trait_data["instruction"]):
        for question in trait_data["questions"]:
            for polarity in ("pos", "neg"):
                name = trait_name if polarity == "pos" else "helpful"
                sp = ("You are a {} assistant. " + pair[polarity]).format(name)
                records.append({"question": question, "system_prompt": sp, "instruction_idx": idx, "polarity": polarity})
                prompts.append(build_messages(sp, question))
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@mistake("test_generate_contrastive_responses", "exactly as given (braces are text)")
def gen_escapes_braces(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    """Doubles the braces of every instruction 'to be safe': the system prompt then holds '{{' where the text had '{'."""
    safe = {"instruction": [{k: v.replace("{", "{{").replace("}", "}}") for k, v in pair.items()}
                            for pair in trait_data["instruction"]], "questions": trait_data["questions"]}
    records, prompts = _records_and_prompts(safe, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@correct("test_generate_contrastive_responses")
def gen_polarity_outer(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = [], []
    for polarity in ("pos", "neg"):
        for idx, pair in enumerate(trait_data["instruction"]):
            for q in trait_data["questions"]:
                sp = construct_system_prompt(trait_name if polarity == "pos" else "helpful", pair[polarity])
                records.append({"question": q, "system_prompt": sp, "instruction_idx": idx, "polarity": polarity})
                prompts.append(build_messages(sp, q))
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return [{**r, "response": a, "sampling": {"max_new_tokens": max_new_tokens, "temperature": temperature}}
            for r, a in zip(records, answers)]


@correct("test_generate_contrastive_responses")
def gen_formatted_strings(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    texts = [format_prompt(p, tokenizer) for p in prompts]
    return _finish(records, generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


@correct("test_generate_contrastive_responses")
def gen_positional_args(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens, temperature), max_new_tokens, temperature)
