"""The built book, read as a reader would in headless Chromium, and the notebooks as a student runs them.

Book (builds it first when the build is missing or stale):
- every section page exists, its plotly figures render and its hints/solutions are dropdowns;
- offline: while any page loads, no request goes anywhere but the book's own local server
  (Chromium runs behind a recording proxy, so every request it makes is seen and none leaves);
- phones: every figure, its legend and its labels fit a 400 px viewport (and a desktop one);
- each section page is at most 1.5 MB, and no temporary path, "SPEC" reference or mode flag shows.
Student notebooks (executed with nbclient, as in Jupyter, on the tiny models):
- an unfilled exercise's test says, in a few lines, which exercise is not implemented yet;
- a notebook run with its figures stays small (figures are plotly JSON, never plotly.js).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path

import nbformat
import pytest

from utils.reference import sections

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
pytestmark = pytest.mark.slow

INPUTS = [ROOT / "_config.yml", ROOT / "_toc.yml", ROOT / "scripts" / "build_book.sh", *ROOT.glob("book/*"),
          *ROOT.glob("utils/**/*"), *ROOT.glob("part_tests/**/*.py"), *ROOT.glob("grading/**/*.py"), *ROOT.glob("data/**/*")]
MAX_PAGE_BYTES = 1_500_000
PHONE, DESKTOP = (400, 900), (1400, 1000)


def _stale() -> bool:
    pages = [HTML / "book" / f"{s}.html" for s in sections()]
    if not all(p.exists() for p in pages):
        return True
    built = min(p.stat().st_mtime for p in pages)
    return any(p.stat().st_mtime > built for p in INPUTS if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def built_book():
    if _stale():
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_book.sh")], cwd=ROOT, capture_output=True, text=True, timeout=3000)
        assert proc.returncode == 0, f"book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return HTML


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("headless Chromium is needed for the book test: apt-get install chromium (the setup script does)")
    return exe


HEADLESS_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--virtual-time-budget=15000"]


def _headless(*args: str, timeout: int = 120) -> str:
    flags = [*HEADLESS_FLAGS, "--allow-file-access-from-files"]
    proc = subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=timeout)
    return proc.stdout


@pytest.mark.parametrize("section", sections())
def test_page_renders(built_book, section, tmp_path):
    page = built_book / "book" / f"{section}.html"
    assert page.exists(), f"{page} was not built"
    dom = _headless(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri())
    assert "plotly-graph-div" in dom, f"{section}: no plotly figure on the page"
    n_divs = dom.count('class="plotly-graph-div')
    n_svgs = dom.count('class="main-svg"')
    assert n_svgs >= n_divs > 0, f"{section}: {n_divs} plotly figure(s) but only {n_svgs} rendered svg layers: plotly.js did not draw them"
    assert dom.count("<details") + dom.count("toggle-details") >= 2, f"{section}: hints/solutions are not dropdowns"
    assert "Show solution" in dom, f"{section}: no solution dropdown"
    assert "Traceback (most recent call last)" not in dom, f"{section}: the page shows a traceback"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{section}.png"
    _headless(f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, f"{section}: no screenshot was taken"


# ---------------------------------------------------------------------------------------------
# Offline, phone-sized, light: the built pages behind a recording proxy
# ---------------------------------------------------------------------------------------------
# Headless Chromium's window is at least 500 px wide: a phone's viewport is a frame of that width.
FRAME = """<!doctype html><html><head><meta charset="utf-8"><style>body {{ margin: 0 }}
iframe {{ border: 0; width: {width}px; height: {height}px }}</style></head>
<body><iframe src="/{page}"></iframe></body></html>"""
# Injected (by the test's server only) before </body>: after the page has loaded and plotly has
# drawn, it measures every figure and writes the result into the DOM that --dump-dom prints.
PROBE = """<script>
(function () {
  function box(el) { var b = el.getBoundingClientRect(); return [Math.round(b.left), Math.round(b.right)]; }
  function report() {
    var vw = window.innerWidth, out = {viewport: vw, scrollWidth: document.documentElement.scrollWidth, figures: []};
    document.querySelectorAll('.plotly-graph-div').forEach(function (div) {
      var wrap = div.closest('.course-figure'), title = wrap && wrap.querySelector('.course-figure-title');
      var svg = div.querySelector('svg.main-svg'), fig = {title: title ? title.textContent.slice(0, 70) : '',
                 div: box(div), drawn: !!svg, cut: []};
      if (svg) {
        var s = box(svg);
        fig.svg = s;
        div.querySelectorAll('svg text').forEach(function (el) {
          var t = (el.textContent || '').trim(), b = el.getBoundingClientRect();
          if (!t || b.width === 0) return;
          if (b.left < s[0] - 1 || b.right > s[1] + 1 || b.left < -1 || b.right > vw + 1)
            fig.cut.push(t.slice(0, 40) + ' at ' + Math.round(b.left) + '..' + Math.round(b.right) + ' px');
        });
        var legend = div.querySelector('g.legend');
        if (legend) { var l = box(legend); if (l[0] < s[0] - 1 || l[1] > s[1] + 1) fig.cut.push('the legend at ' + l[0] + '..' + l[1] + ' px'); }
      }
      out.figures.push(fig);
    });
    out.errors = (window.__courseErrors || []).slice(0, 8);
    out.overflow = [];  // math and tables that scroll sideways inside their own box, or reach past the edge
    document.querySelectorAll('mjx-container, div.math, article table').forEach(function (el) {
      var b = el.getBoundingClientRect();
      if (b.width === 0 || out.overflow.length >= 8) return;
      var scrolls = /auto|scroll/.test(getComputedStyle(el).overflowX) && el.scrollWidth > el.clientWidth + 1;
      if (scrolls || b.right > vw + 1)
        out.overflow.push(el.tagName.toLowerCase() + (el.getAttribute('display') === 'true' ? '[display]' : '') + ' ' +
                          el.scrollWidth + ' px in ' + el.clientWidth + ' px: ' + (el.textContent || '').trim().slice(0, 50));
    });
    out.wide = [];  // the outermost elements that reach past the viewport's right edge
    document.querySelectorAll('body *').forEach(function (el) {
      var b = el.getBoundingClientRect(), p = el.parentElement && el.parentElement.getBoundingClientRect();
      var style = getComputedStyle(el);
      if (style.position === 'fixed' || style.visibility === 'hidden') return;
      if (b.right > vw + 1 && b.width > 0 && p && p.right <= vw + 1 && out.wide.length < 8)
        out.wide.push(el.tagName.toLowerCase() + '.' + (el.className && el.className.baseVal === undefined ? el.className : '').split(' ').join('.') +
                      ' ' + Math.round(b.left) + '..' + Math.round(b.right) + ' px: ' + (el.textContent || '').trim().slice(0, 50));
    });
    var host = window.parent !== window ? window.parent.document : document;  // a phone-sized frame reports to its page
    var pre = host.createElement('pre'); pre.id = 'course-probe'; pre.textContent = JSON.stringify(out);
    host.body.appendChild(pre);
  }
  window.addEventListener('load', function () { setTimeout(report, 4000); });
})();
</script>"""


# Injected first in <head>: records script errors and console.error calls, for the probe to report.
ERRORS = """<script>window.__courseErrors = [];
window.addEventListener('error', function (e) { window.__courseErrors.push(String(e.message || e)); }, true);
(function () { var o = console.error; console.error = function () {
  window.__courseErrors.push(Array.prototype.map.call(arguments, String).join(' ')); return o.apply(console, arguments); }; })();
</script>"""


class _BookServer:
    """Serves the built book on 127.0.0.1 and is Chromium's proxy for everything else.

    Every request Chromium makes reaches this server (the page's own through the proxy too, see
    `--proxy-bypass-list=<-loopback>`) and is recorded; any request for another origin is answered
    502 and never forwarded, so nothing leaves the machine and each attempt is listed."""

    def __init__(self, root: Path):
        server = self
        self.requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def _local_path(self):
                url = urllib.parse.urlsplit(self.path)
                full = self.path if url.scheme else f"http://{self.headers.get('Host', server.origin)}{self.path}"
                server.requests.append(f"{self.command} {full}")
                if url.scheme and url.netloc != server.origin:
                    self.send_error(502, "offline test: this request would leave the machine")
                    return None
                return urllib.parse.urlunsplit(("", "", url.path, url.query, "")) if url.scheme else self.path

            def do_GET(self):
                path = self._local_path()
                if path is None:
                    return
                self.path = path
                frame = re.fullmatch(r"/__viewport__/(\d+)x(\d+)/(.+)", urllib.parse.urlsplit(path).path)
                file = root / urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/")
                if frame or (file.suffix == ".html" and file.is_file()):  # the page, with the probe (or its frame)
                    if frame:
                        body = FRAME.format(width=frame[1], height=frame[2], page=frame[3]).encode()
                    else:
                        body = file.read_text().replace("<head>", "<head>" + ERRORS, 1).replace("</body>", PROBE + "</body>").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def do_HEAD(self):
                if self._local_path() is not None:
                    super().do_HEAD()

            def do_POST(self):
                if self._local_path() is not None:
                    self.send_error(405)

            def do_CONNECT(self):  # https through the proxy: never tunnelled
                server.requests.append(f"CONNECT {self.path}")
                self.send_error(502, "offline test: this request would leave the machine")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def load(self, page: str, window: tuple[int, int], profile: Path) -> tuple[dict, list[str]]:
        """Open `page` (a path under the book) in headless Chromium: (the probe's report, the requests
        the page made). Chromium's net log names each request's initiator, which tells the page's
        requests from the browser's own (update checks and the like, which the proxy refuses too)."""
        self.requests.clear()
        url = f"http://{self.origin}/{page}"
        top = url if window[0] >= 500 else f"http://{self.origin}/__viewport__/{window[0]}x{window[1]}/{page}"
        netlog = profile.parent / f"{profile.name}-net.json"
        proc = subprocess.run(
            [_chromium(), *HEADLESS_FLAGS, f"--user-data-dir={profile}", f"--window-size={max(window[0], 500)},{window[1]}",
             f"--proxy-server=http://{self.origin}", "--proxy-bypass-list=<-loopback>",
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
             f"--log-net-log={netlog}", "--net-log-capture-mode=Default", "--dump-dom", top],
            capture_output=True, text=True, timeout=180)
        match = re.search(r'<pre id="course-probe">(.*?)</pre>', proc.stdout, re.S)
        assert match, f"{page}: the page did not finish loading in headless Chromium:\n{proc.stderr[-2000:]}"
        assert any(url in r for r in self.requests), f"{page}: the recording proxy never saw the page: {self.requests}"
        page_requests = [f"{method} {target}" for method, target, initiator in _netlog_requests(netlog)
                         if initiator == f"http://{self.origin}" or target == top]
        assert any(r.endswith(url) for r in page_requests), f"{page}: the net log does not show the page's own request"
        import html as _html

        return json.loads(_html.unescape(match.group(1))), page_requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _netlog_requests(path: Path) -> list[tuple[str, str, str]]:
    """(method, url, initiator) of every request in a Chromium net log (initiator: the origin of the
    page that asked for it; 'not an origin' for the browser's own requests and navigations)."""
    text = path.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit: close its event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [(e["params"].get("method", ""), e["params"]["url"], str(e["params"].get("initiator")))
            for e in log["events"] if e.get("type") == start and "url" in e.get("params", {})]


@pytest.fixture(scope="module")
def book_server(built_book):
    server = _BookServer(built_book)
    yield server
    server.close()


def _pages() -> list[str]:
    return [f"book/{p}.html" for p in ["intro", *sections(), "glossary", "appendix_backends", "appendix_instructors"]] + ["search.html"]


def _foreign(requests: list[str], origin: str) -> list[str]:
    return [r for r in requests if not r.split(" ", 1)[1].startswith(f"http://{origin}/")]


def _cut_figures(report: dict) -> list[str]:
    problems = []
    for i, fig in enumerate(report["figures"], start=1):
        name = f"figure {i} ({fig['title'] or 'untitled'})"
        if not fig["drawn"]:
            problems.append(f"{name} was not drawn")
            continue
        left, right = fig["div"]
        if left < 0 or right > report["viewport"] or fig["svg"][1] > right + 1:
            problems.append(f"{name} spans {left}..{right} px (svg to {fig['svg'][1]} px) in a {report['viewport']} px viewport")
        problems += [f"{name}: cut off: {c}" for c in fig["cut"]]
    return problems


@pytest.mark.parametrize("page", _pages())
def test_page_offline_and_fits_a_phone(book_server, page, tmp_path):
    report, requests = book_server.load(page, PHONE, tmp_path / "profile")
    foreign = _foreign(requests, book_server.origin)
    assert not foreign, f"{page} requests things from outside the book (they must be served by the book itself):\n" + "\n".join(foreign)
    missing = [r for r in requests if "/_static/" in r and not (HTML / urllib.parse.urlsplit(r.split(" ", 1)[1]).path.lstrip("/")).is_file()]
    assert not missing, f"{page} asks for static files the build lacks: {missing}"
    assert report["viewport"] == PHONE[0], f"the phone viewport is {report['viewport']} px, not {PHONE[0]}"
    problems = _cut_figures(report)
    assert not problems, f"{page} at {PHONE[0]} px:\n" + "\n".join(problems)
    assert not report["errors"], f"{page} logs errors in the browser's console:\n" + "\n".join(report["errors"])
    assert not report["overflow"], (f"{page} at {PHONE[0]} px has math or tables wider than their column "
                                    "(they scroll sideways):\n" + "\n".join(report["overflow"]))
    assert report["scrollWidth"] <= PHONE[0] + 1, \
        f"{page} scrolls sideways on a phone: {report['scrollWidth']} px wide, because of:\n" + "\n".join(report["wide"])
    if page.removeprefix("book/").removesuffix(".html") in sections():
        assert report["figures"], f"{page}: no figure found"


@pytest.mark.parametrize("section", sections())
def test_figures_fit_a_desktop(book_server, section, tmp_path):
    report, _ = book_server.load(f"book/{section}.html", DESKTOP, tmp_path / "profile")
    problems = _cut_figures(report)
    assert not problems, f"{section} at {DESKTOP[0]} px:\n" + "\n".join(problems)


def _page_text(page: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(), "html.parser")
    for tag in soup(["script", "style"]):
        tag.decompose()
    return soup.get_text(" ")


@pytest.mark.parametrize("section", sections())
def test_page_is_light_and_leaks_nothing(built_book, section):
    page = built_book / "book" / f"{section}.html"
    size = page.stat().st_size
    assert size <= MAX_PAGE_BYTES, f"{section}: the page is {size / 1e6:.2f} MB (at most {MAX_PAGE_BYTES / 1e6:.1f} MB): is plotly.js inlined?"
    text = _page_text(page)
    for pattern, what in ((r"/tmp/|/var/folders/", "a temporary path"), (r"\bSPEC\b", "a reference to the product description"),
                          (r"tiny mode: (True|False)|toy world: (True|False)", "a raw mode flag")):
        found = [text[max(0, m.start() - 60):m.end() + 40] for m in re.finditer(pattern, text)]
        assert not found, f"{section}: the page shows {what}: {found[:3]}"


# ---------------------------------------------------------------------------------------------
# Student notebooks, executed as in Jupyter (nbclient) on the tiny models
# ---------------------------------------------------------------------------------------------
TEST_CALL = re.compile(r"^tests\.test_\w+\((\w+)", re.M)


def _execute(path: Path, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    monkeypatch.setenv("PERSONA_COURSE_MODEL", "tiny")
    monkeypatch.setenv("PERSONA_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    for var in ("NBGRADER_EXECUTION", "PERSONA_COURSE_TINY", "PERSONA_COURSE_BOOK"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


@pytest.mark.parametrize("section", sections())
def test_unfilled_exercises_fail_in_a_few_lines(section, tmp_path, monkeypatch):
    """A student who runs a test cell before filling in the stub reads which exercise is not done yet,
    in a few lines, not two chained tracebacks; the cell still fails."""
    nb = _execute(ROOT / "exercises" / f"{section}.ipynb", tmp_path, monkeypatch)
    test_cells = [c for c in nb.cells if c.cell_type == "code" and "from part_tests import" in c.source]
    assert test_cells, f"{section}: no test cell found"
    for cell in test_cells:
        first = TEST_CALL.search(cell.source).group(1)
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert errors, f"{section}: the test cell for {first} passed on the unfilled stub:\n{cell.source}"
        lines = [line for tb in errors for entry in tb.traceback for line in entry.splitlines()]
        text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))
        assert len(lines) <= 6, f"{section}: the failing test for {first} prints {len(lines)} lines (at most 6):\n{text}"
        assert "not implemented yet" in text, f"{section}: the failing test for {first} does not say 'not implemented yet':\n{text}"
        named = TEST_CALL.findall(cell.source)
        assert any(n in text for n in named), f"{section}: the failing test does not name the exercise ({named}):\n{text}"


def test_notebook_with_figures_stays_small(tmp_path, monkeypatch):
    """Figures in a notebook are plotly JSON (drawn by JupyterLab's plotly extension), never plotly.js itself."""
    section = sections()[0]
    nb = _execute(ROOT / "solutions" / f"{section}.ipynb", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{section}: the solutions notebook failed: {errors[0].ename}: {errors[0].evalue}"
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 3, f"{section}: expected its figures as plotly JSON, found {len(figures)}"
    assert not any("text/html" in o.get("data", {}) and "Plotly" in o["data"]["text/html"] for o in outputs), \
        "a figure output carries HTML/JavaScript: inside Jupyter figures must be plotly JSON only"
    out = tmp_path / f"{section}.ipynb"
    nbformat.write(nb, out)
    size = out.stat().st_size
    assert size < 1_000_000, f"{section}: executed with its figures the notebook is {size / 1e6:.2f} MB (under 1 MB expected)"
