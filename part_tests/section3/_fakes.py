"""Stand-ins and small helpers that several of Section 3's exercise tests use.

Only what more than one exercise needs lives here; each exercise's own fixtures and fakes are in its
module (`ex3_<M>_<name>.py`).
"""

from __future__ import annotations


def _system_prompt(name: str, instruction: str) -> str:
    """The course's `construct_system_prompt` (Exercise 3.1), which the later tests put in the student's place."""
    return f"You are a {name} assistant. {instruction}"


def _prompt_key(prompt) -> str:
    """A prompt as one string: a formatted prompt as it is, a chat as its (role, content) pairs."""
    if isinstance(prompt, str):
        return prompt
    return repr([(m.get("role"), m.get("content")) for m in prompt])


def _input_device(model):
    from utils.models import input_device

    return input_device(model)


def _dims(model) -> tuple[int, int]:
    """(n_layers, d_model): the model's number of decoder blocks and the width of its residual stream."""
    from utils.hooks import get_blocks

    return len(get_blocks(model)), model.config.get_text_config().hidden_size


def _direct(fn, *args, name: str, **kwargs):
    """The student's function called inside a property, which runs under one `_guarded` check: a
    NotImplementedError still reads 'not implemented yet', and the result is made plain as `call` does."""
    from part_tests._common import NotImplementedYet, plain

    try:
        out = fn(*args, **kwargs)
    except NotImplementedError as err:
        raise NotImplementedYet(f"{name}: not implemented yet -- replace the `raise NotImplementedError` in the cell "
                                "above with your code.") from err
    return plain(out, name)


def _guarded(run, name: str) -> None:
    """Run a whole property (`run()`, a `for_all`) under the check `call` makes around one call: the functions
    the tests check with are the same objects afterwards. One check per property keeps its examples cheap."""
    from part_tests._common import call

    call(run, name=name)


# Text a user may type that meets str.format / str.replace templating, as whole strings (they shrink in one
# step, which keeps a failing property cheap): placeholders of the judge's and of the system prompt's templates,
# positional and escaped braces, lone braces, template words, and plain text.
AWKWARD_TEXTS = [
    "What is {answer} here?", "{question} again", "Why {} and {0}?", "Is {{this}} it?", "Explain { please",
    "close } this", "{instruction} first", "{assistant_name}", "Reply SCORE: 50 or REFUSAL", "100% sure, $1",
    "plain words", "Be {evil}",
]
