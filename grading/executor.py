"""The grader's side of autograding: how nbgrader runs a submission (nbgrader/nbgrader_config.py).

`GuardedExecute` replaces nbgrader's `Execute` preprocessor. On top of what nbgrader does (a cell
whose kernel reply is an error counts as failed even when the notebook hid the traceback), it

- writes a fresh random nonce into each graded cell just before running it; the course's runner
  (grading/runner.py) prints a confirmation with that nonce after each test that passed, and a
  graded cell whose output lacks any of its confirmations gets an error output, so it scores 0. A
  pass line printed by student code, or a failure hidden from the output, earns nothing;
- bounds a runaway cell: after the per-cell time limit the kernel is interrupted; if it does not come
  back within `interrupt_grace` seconds, the cells after it are not run (each gets an error output,
  so 0 points) and the kernel is killed at the end, so one endless loop costs at most the limit plus
  that grace, not the limit once for every cell that follows;
- before each graded cell, asks the kernel to put itself back as it started
  (grading/kernel_reset.py: transformers, import hooks, patched libraries, shell and kernel
  methods, output streams, threads started by the notebook), so that nothing a student cell installed
  runs with the graded cell; a kernel that does not confirm the reset gets no points for its graded
  cells, and what was put back is listed in the tamper report;
- lists, in the grader's log and in `tamper_report.csv` in the course folder, the student cells that
  touch the interpreter's or the course's internals (sys.modules, builtins, get_ipython, part_tests,
  frames, ...; grading/tamper.py), for the instructor to read. The list changes no score.
"""

from __future__ import annotations

import asyncio
import re
import secrets

from nbclient.util import run_sync
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer

from grading.kernel_reset import MESSAGE as RESET_REQUEST
from grading.kernel_reset import REPLY as RESET_REPLY
from grading.runner import NONCE_PLACEHOLDER, PASS_LINE
from grading.tamper import suspicious_lines, write_report

TEST_CALL = re.compile(r"^\s*tests\.(test_\w+)\(", re.M)


def _is_graded_test(cell: NotebookNode) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _stdout_text(cell: NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _has_error(cell: NotebookNode) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def _error_output(ename: str, message: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=message, traceback=[f"\x1b[0;31m{ename}\x1b[0m: {message}"])


class GuardedExecute(Execute):
    """nbgrader's Execute, with nonce-confirmed graded cells, bounded runaway cells and a tamper list."""

    # A kernel stuck in a loop never sends the rest of its cell's output: wait for it a while, then
    # go on (nbgrader's default raises, which would abandon the whole submission).
    raise_on_iopub_timeout = Bool(False).tag(config=True)
    iopub_timeout = Integer(10).tag(config=True)

    interrupt_grace = Integer(
        15, help="Seconds an interrupted kernel gets to answer before the cells after it are given up.").tag(config=True)
    reset_timeout = Integer(
        30, help="Seconds the kernel gets to confirm the reset before a graded cell.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._flags = []
        self._stuck = False
        self._reset_failed = None
        try:
            return super().preprocess(nb, resources, km)
        finally:
            self._write_flags(resources or {})

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if getattr(self, "_stuck", False):  # a runaway cell before this one never gave the kernel back
            if cell.cell_type == "code":
                cell.outputs = [_error_output("RunawayCell", "not run: a cell above ran past its time limit and "
                                              "ignored the interrupt")]
            return cell
        if cell.cell_type == "code" and not _is_graded_test(cell) and not cell.metadata.get("nbgrader", {}).get("locked"):
            for what, lineno, line in suspicious_lines(cell.source):
                self._flags.append((cell.metadata.get("nbgrader", {}).get("grade_id", f"cell-{cell_index}"), what, lineno, line))
        if not _is_graded_test(cell) or NONCE_PLACEHOLDER not in cell.source:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        cell_id = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell-{cell_index}")
        if self._reset_failed is None:  # before every graded cell, until one reset fails
            self._reset_failed = await self._reset_kernel(cell_id)
            if self._reset_failed:
                self.log.error("%s: %s; this and the later graded cells score 0", cell_id, self._reset_failed)
                self._flags.append((cell_id, "the grader's kernel reset failed", 0, self._reset_failed[:500]))
        if self._reset_failed:
            cell.outputs = [_error_output("GradingError", f"not graded: {self._reset_failed}")]
            return cell
        nonce = secrets.token_hex(16)
        original = cell.source
        cell.source = original.replace(NONCE_PLACEHOLDER, nonce)
        try:
            cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            cell.source = original
        out = _stdout_text(cell)
        missing = [t for t in TEST_CALL.findall(original) if PASS_LINE.format(test=t, nonce=nonce) not in out]
        if missing and not _has_error(cell):
            cell.outputs.append(_error_output(
                "GradingError", f"no confirmation that {', '.join(missing)} passed: the test did not finish, or the "
                                "notebook changed what the test printed"))
        # the nonce is spent: keep it out of the saved notebook and the feedback
        for o in cell.outputs:
            if o.get("output_type") == "stream":
                o["text"] = o["text"].replace(f" ({nonce})", "")
        return cell

    execute_cell = run_sync(async_execute_cell)  # nbclient binds its own coroutine here

    async def _async_handle_timeout(self, timeout, cell=None):
        reply = await super()._async_handle_timeout(timeout, cell)
        # Interrupted: give the kernel `interrupt_grace` seconds to come back. A kernel that ignores
        # the interrupt would make every later cell wait out its own limit behind the loop, so the
        # later cells are not run at all: each gets an error output (0 points), and the kernel is
        # killed when the notebook ends.
        try:
            await asyncio.wait_for(self._kernel_idle(), self.interrupt_grace)
        except asyncio.TimeoutError:
            self.log.error("the kernel ignored the interrupt: the cells after this one are not run")
            self._stuck = True
            self.shutdown_kernel = "immediate"
        return reply

    async def _reset_kernel(self, cell_id: str) -> str | None:
        """Ask the kernel to put itself back as it started (grading/kernel_reset.py); None when it
        confirmed, else why not. A failed reset is final: every later graded cell scores 0 too."""
        token = secrets.token_hex(16)
        request = self.kc.session.msg(RESET_REQUEST, {"token": token})
        self.kc.shell_channel.send(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reset_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return ("the kernel did not answer the grader's reset request (a cell above changed the kernel, or "
                        f"the notebook was not run in the {self.kernel_name or 'grading'} kernel)")
            try:
                reply = await self.kc.shell_channel.get_msg(timeout=remaining)
            except Exception:  # queue.Empty on timeout
                continue
            if reply["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                continue
            content = reply.get("content", {})
            if reply["msg_type"] != RESET_REPLY or content.get("status") != "ok" or content.get("token") != token:
                return f"the kernel's answer to the grader's reset request was not a confirmation: {content}"
            restored = content.get("restored") or []
            if restored:
                self.log.warning("the grader put back before %s: %s", cell_id, ", ".join(restored))
                self._flags.append((cell_id, "kernel state put back before the graded cell", 0, ", ".join(restored)[:500]))
            return None

    async def _kernel_idle(self) -> None:
        """Returns once the kernel answers a request on its shell channel again."""
        msg_id = self.kc.kernel_info()
        while True:
            msg = await self.kc.shell_channel.get_msg(timeout=None)
            if msg["parent_header"].get("msg_id") == msg_id:
                return

    def _write_flags(self, resources: dict) -> None:
        write_report(self._flags, resources, self.log)
