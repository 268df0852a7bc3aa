"""nbgrader course configuration. Run nbgrader commands from this folder (see the README and the
instructors' appendix, book/appendix_instructors.md)."""

from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput, SaveAutoGrades

from grading.executor import GuardedExecute
from grading.sandbox import KERNEL_NAME

c = get_config()  # noqa: F821 - provided by nbgrader

c.CourseDirectory.course_id = "persona-vectors"
c.CourseDirectory.root = "."

# The student's stub: the same text the course's own generator writes into exercises/.
c.ClearSolutions.code_stub = {"python": '# YOUR CODE HERE\nraise NotImplementedError("not implemented yet")'}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Autograding runs each submission in the sandboxed grading kernel (grading/sandbox.py: the course's
# files read-only, other submissions and the gradebook hidden, a private cache), on the tiny offline
# models on a CPU (nbgrader sets NBGRADER_EXECUTION in the kernel), with nbgrader's Execute replaced
# by GuardedExecute (grading/executor.py: nonce-confirmed graded cells, bounded runaway cells, a
# tamper list in tamper_report.csv, grading/tamper.py).
c.Autograde.autograde_preprocessors = [
    GuardedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, AssignLatePenalties,
    CheckCellMetadata,
]
c.GuardedExecute.kernel_name = KERNEL_NAME
# Per-cell time limit. The slowest honest cell on the tiny models takes a few seconds on a 2-core
# CPU (tests/test_nbgrader_roundtrip.py measures it); the limit leaves a wide margin for slower
# machines. An endless loop costs this plus GuardedExecute.interrupt_grace at most.
c.GuardedExecute.timeout = 60
c.GuardedExecute.interrupt_on_timeout = True
