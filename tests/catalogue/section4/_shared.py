"""What Section 4's catalogue modules share: the reference solution and the names a student's
notebook has in its globals (course steps, utils imports, earlier exercises).

A catalogue module imports the names it uses from here, so that they are globals of that module:
the tests' `using(...)` patches replace a name in the globals of the function under test, and so
reach the wrong versions exactly as they reach a student's notebook.
"""

from __future__ import annotations

from utils.reference import load

ref = load("section4")

ActivationSteerer = ref.ActivationSteerer
generate_with_steerer = ref.generate_with_steerer
get_judge = ref.get_judge
data = ref.data
generate = ref.generate
build_messages = ref.build_messages
conversations_from = ref.conversations_from
response_mean_activations = ref.response_mean_activations
StepRunner = ref.StepRunner
model_id = ref.model_id
tensor_digest = ref.tensor_digest
contrastive_requests = ref.contrastive_requests
generate_responses = ref.generate_responses
judge_call = ref.judge_call
is_final = ref.is_final
judge_identity = ref.judge_identity
filter_effective = ref.filter_effective
extract_trait_vectors = ref.extract_trait_vectors
JUDGE_KINDS = ref.JUDGE_KINDS
LAYER = 2  # the notebook's LAYER on the tiny model: a function that reads it instead of `layer` uses block 2

Ref = ref.ActivationSteerer
