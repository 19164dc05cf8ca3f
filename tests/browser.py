"""What the browser tests share: Debian's Chromium driven by playwright, screenshots for review, and
the checks every page state must pass.

- `check_page` runs axe-core (WCAG 2.1 A and AA; no violation allowed) and the layout check (no
  element reaches past the window's edge or cuts its own content off; no sideways scrolling), and
  saves a screenshot to the test's folder and to .screenshots-review/.
- axe-core is the npm package pinned in tests/package-lock.json, which `make test` installs into
  tests/node_modules/; it is added to every page as an init script (which the pages' strict
  Content-Security-Policy does not apply to), so nothing is fetched while the tests run.

Playwright never downloads a browser: the system's chromium is launched.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, sync_playwright

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AXE = ROOT / "tests" / "node_modules" / "axe-core" / "axe.min.js"
REVIEW = ROOT / ".screenshots-review"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
NARROW = {"width": 320, "height": 700}
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

AXE_RUN = """async (tags) => {
  const result = await axe.run(document, { runOnly: { type: "tag", values: tags } });
  return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help}\\n` +
    v.nodes.slice(0, 5).map((n) => `    ${n.target.join(" ")}: ${n.failureSummary.replace(/\\n/g, " ")}`).join("\\n"));
}"""

LAYOUT = """() => {
  const width = document.documentElement.clientWidth;
  const FIELDS = "input, textarea, select";  // a value longer than its field scrolls inside it, by design
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (el.name ? `[name=${el.name}]` : "") + (el.placeholder ? `[placeholder="${el.placeholder}"]` : "") +
    (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  const faults = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg") !== null && el.tagName.toLowerCase() !== "svg") continue;
    if (el.closest(".visually-hidden, .skip")) continue;
    const box = el.getBoundingClientRect();
    if (!box.width || !box.height) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    if (box.right > width + 1 || box.left < -1) {
      faults.push(`${name(el)} spans ${Math.round(box.left)}..${Math.round(box.right)} px of ${width}`);
    } else if (style.overflowX !== "visible" && el.scrollWidth > el.clientWidth + 1 && !el.matches(FIELDS)) {
      faults.push(`${name(el)} cuts off its content (${el.scrollWidth} px in ${el.clientWidth})`);
    }
  }
  const page = document.documentElement.scrollWidth;
  if (page > width) {
    const wide = [...document.body.querySelectorAll("*")].filter((el) => el.getBoundingClientRect().right > width ||
      (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)).map(name).slice(0, 5);
    faults.push(`the page scrolls sideways (${page} px in ${width}): ${wide.join(", ")}`);
  }
  return faults.slice(0, 12);
}"""


@contextmanager
def chromium() -> Iterator[Browser]:
    if not AXE.is_file():
        raise RuntimeError(f"{AXE} is missing: `make test` installs it (npm ci --prefix tests)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, problems: list[str]) -> Page:
    """A tab at desktop width with axe-core loaded, that notes browser dialogs, script errors and
    Content-Security-Policy violations in `problems`."""
    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(path=str(AXE))
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.on("dialog", lambda dialog: (problems.append("browser dialog: " + dialog.message), dialog.dismiss()))
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: "Content Security Policy" in msg.text and problems.append("CSP: " + msg.text))
    return tab


def shoot(page: Page, folder: Path, name: str, review: Path = REVIEW) -> None:
    """A full-page screenshot in the test's folder, copied to the review folder."""
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    review.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, review / path.name)


def accessibility_faults(page: Page) -> list[str]:
    return page.evaluate(AXE_RUN, WCAG)


def layout_faults(page: Page) -> list[str]:
    return page.evaluate(LAYOUT)


def check_page(page: Page, folder: Path, name: str, review: Path = REVIEW) -> None:
    """The checks every page state passes, and its screenshot (taken first, to see a failure)."""
    shoot(page, folder, name, review)
    faults = accessibility_faults(page)
    assert not faults, f"{name}: WCAG 2.1 AA violations:\n" + "\n".join(faults)
    layout = layout_faults(page)
    assert not layout, f"{name} at {page.viewport_size}: " + "; ".join(layout)


def check_widths(page: Page, folder: Path, name: str, review: Path = REVIEW) -> None:
    """`check_page` at desktop and phone width, and the layout at 320 px; back to desktop after."""
    check_page(page, folder, f"{name}-desktop", review)
    page.set_viewport_size(PHONE)
    check_page(page, folder, f"{name}-phone", review)
    page.set_viewport_size(NARROW)
    layout = layout_faults(page)
    page.set_viewport_size(DESKTOP)
    assert not layout, f"{name} at 320 px: " + "; ".join(layout)


def text_lines(locator: Locator) -> int:
    """On how many lines the element's text is laid out."""
    return locator.evaluate("""(el) => {
      const range = document.createRange();
      range.selectNodeContents(el);
      return new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top))).size;
    }""")


def focused(page: Page) -> str:
    """The focused element: `#id`, else its tag and text (for assertion messages)."""
    return page.evaluate("""() => {
      const el = document.activeElement;
      if (!el || el === document.body) return "body";
      return el.id ? "#" + el.id : `${el.tagName.toLowerCase()} "${(el.textContent || "").trim().slice(0, 60)}"`;
    }""")
