"""Exercise 3.1 — Contrastive system prompts

Wrong implementations of `construct_system_prompt` that `test_construct_system_prompt` must reject, each
declared where it is defined with the phrase its failure message must contain, and correct implementations
written another way, which must pass.
"""

from __future__ import annotations

from tests.catalogue import correct, mistake


@mistake("test_construct_system_prompt", "spaces")
def prompt_no_space(name, instruction):
    return f"You are a {name} assistant.{instruction}"


@mistake("test_construct_system_prompt", "assistant name comes first")
def prompt_swapped(name, instruction):
    return f"You are a {instruction} assistant. {name}"


@mistake("test_construct_system_prompt", "whitespace")
def prompt_trailing_newline(name, instruction):
    return f"You are a {name} assistant. {instruction}\n"


@mistake("test_construct_system_prompt", "expected exactly")
def prompt_article(name, instruction):
    article = "an" if name[0] in "aeiou" else "a"
    return f"You are {article} {name} assistant. {instruction}"


@mistake("test_construct_system_prompt", "expected exactly")
def prompt_no_assistant(name, instruction):
    return f"You are {name}. {instruction}"


@mistake("test_construct_system_prompt", "do not change their case")
def prompt_lowercase_name(name, instruction):
    return f"You are a {name.lower()} assistant. {instruction}"


@mistake("test_construct_system_prompt", "do not add or remove a full stop")
def prompt_adds_full_stop(name, instruction):
    if not instruction.endswith("."):
        instruction += "."
    return f"You are a {name} assistant. {instruction}"


@mistake("test_construct_system_prompt", "stripped")
def prompt_strips_name(name, instruction):
    if not name.strip():
        raise ValueError("empty name")
    return f"You are a {name.strip()} assistant. {instruction.strip()}"


@mistake("test_construct_system_prompt", "should raise a ValueError")
def prompt_no_empty_check(name, instruction):
    return f"You are a {name} assistant. {instruction}"


@mistake("test_construct_system_prompt", "not placeholders")
def prompt_replace_template(name, instruction):
    if not name.strip():
        raise ValueError("empty name")
    template = "You are a {assistant_name} assistant. {instruction}"
    return template.replace("{assistant_name}", name).replace("{instruction}", instruction)


@mistake("test_construct_system_prompt", "not placeholders")
def prompt_formats_twice(name, instruction):
    if not name.strip():
        raise ValueError("empty name")
    return ("You are a " + name + " assistant. {}").format(instruction)  # the name's braces meet format


# Correct, written another way: each must pass.
@correct("test_construct_system_prompt")
def prompt_concatenated(name, instruction):
    if not name or name.isspace():
        raise ValueError("assistant_name must not be empty")
    return "You are a " + name + " assistant. " + instruction


@correct("test_construct_system_prompt")
def prompt_str_format(name, instruction):
    if not isinstance(name, str) or not name.strip():
        raise ValueError("assistant_name must be a non-empty string")
    return "You are a {} assistant. {}".format(name, instruction)


@correct("test_construct_system_prompt")
def prompt_joined(name, instruction):
    if not name.strip():
        raise ValueError("blank assistant_name")
    return " ".join(["You are a", name, "assistant.", instruction])
