"""Everything that exists only to grade a submission (nbgrader's autograde in the grading kernel).

- `sandbox`: the grading kernel `persona-course-grader` (bubblewrap: the course read-only, the course
  folder hidden, a private cache) and its start-up lines;
- `executor`: `GuardedExecute`, nbgrader's Execute with nonce-confirmed graded cells, bounded
  runaway cells and a kernel reset before each graded cell;
- `tamper`: the list of student lines that touch internals (`tamper_report.csv`);
- `runner`: how a graded cell runs its tests (`graded`);
- `digest`: the digest of the course's files a graded cell checks;
- `fingerprint`: what the tests judge with, compared by identity, and the libraries as the kernel
  started (put back before each graded cell's tests);
- `kernel_reset`: the kernel's handler that puts it back as it started before each graded cell;
- `watch`: the audit hook that notes notebook code reaching into a running graded test;
- `classroom`: `python -m grading.classroom autograde`, a whole class graded in parallel on Dask into
  one gradebook, with `grade_task` (one submission, as `nbgrader autograde --student` grades it),
  `gradebook` (SQLite with one writer, or PostgreSQL), `cluster` (local, a scheduler, SLURM/PBS),
  `pgserver` (a throwaway PostgreSQL server) and `synthetic` (a class made from the course, to test
  and time grading).

Imports run grading -> part_tests -> utils, never back up, but for one seam: `part_tests/_guard.py`,
through which the tests' `call` takes the fingerprint.
"""

# The course's own packages, lowest layer first: a graded cell forgets them and reads them again from
# disk, the grading kernel's reset and the fingerprint watch them, the digest covers their files.
COURSE_PACKAGES = ("utils", "part_tests", "grading")
