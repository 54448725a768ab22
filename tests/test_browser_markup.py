"""Visitor text is text, in a real browser (headless Chromium) on a tiny random model: markup typed into
every free-text field and into the draft tree's dropdown comes back in messages, toasts, tables and
views as characters, and no element is ever made from it."""

from __future__ import annotations

import re

import pytest

from test_browser import RUN_TIMEOUT_MS, browser, open_page  # noqa: F401  (browser: a fixture)

from playwright.sync_api import expect  # noqa: E402  (test_browser decided whether the browser test runs)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Elements a renderer would make from this text: HTML tags (one with a handler), a Markdown image, link,
# emphasis and code, and a formula.
MARKUP = ('<img id="planted-img" src=x onerror="window.planted=1"><b id="planted-b">B</b>'
          '<a id="planted-a" href="javascript:window.planted=2">A</a> ![i](x) [l](javascript:alert(1)) *em* `c` $x^2$')
PLANTED = "#planted-img, #planted-b, #planted-a, img[src='x'], a[href^='javascript'], em:text-is('em')"


def assert_nothing_planted(page) -> None:
    assert page.locator(PLANTED).count() == 0
    assert page.evaluate("() => window.planted") is None


def in_settings(page, action) -> None:
    """Open the settings at the side, act, close them."""
    page.locator(".sidebar .toggle-button").first.click()
    action()
    page.locator(".sidebar .toggle-button").first.click()


def test_markup_typed_anywhere_is_shown_as_text(app_url, browser):  # noqa: F811
    page = open_page(browser, app_url)
    shown = re.compile(re.escape('<img id="planted-img"'))

    # The prompt: raced, then echoed in the session's runs.
    page.get_by_label("Prompt", exact=True).fill(MARKUP)
    page.get_by_role("button", name="Run race").click()
    expect(page.locator("#message")).to_contain_text("Done", timeout=RUN_TIMEOUT_MS)
    page.get_by_role("tab", name="Runs").click()
    expect(page.locator("#history")).to_contain_text("planted-img")
    assert_nothing_planted(page)

    # The draft tree dropdown takes a typed value: the rejection quotes it, in the message and a toast.
    def type_tree() -> None:
        tree = page.get_by_label("Draft tree")
        tree.fill(MARKUP)
        tree.press("Enter")

    in_settings(page, type_tree)
    page.get_by_role("button", name="Run race").click()
    expect(page.locator("#message")).to_contain_text(shown)
    expect(page.locator(".toast-body").first).to_contain_text("Draft tree must be one of")
    assert_nothing_planted(page)

    # The custom tree box, for the custom template: its message quotes the text too.
    def type_custom_tree() -> None:
        tree = page.get_by_label("Draft tree")
        tree.fill("custom JSON")
        tree.press("Enter")
        page.get_by_label("Custom tree (JSON list of paths)").fill(MARKUP)

    in_settings(page, type_custom_tree)
    page.get_by_role("button", name="Run race").click()
    expect(page.locator("#message")).to_contain_text("Custom tree: unknown tree")
    expect(page.locator("#message")).to_contain_text(shown)
    assert_nothing_planted(page)

    # The token lookup: its note quotes the text, and the row's title shows its first token.
    page.get_by_role("tab", name="Matrix rows").click()
    lookup = page.locator("#lookup-text textarea, #lookup-text input").first
    lookup.fill(MARKUP + " more")
    lookup.press("Enter")
    expect(page.locator("#rows-lookup, #tab-rows").first).to_contain_text("tokens; showing the first")
    assert_nothing_planted(page)
