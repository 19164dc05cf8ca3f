"""The admin UI as an admin uses it, in headless Chromium: SAML login through the IdP as a member of
the admin group, a model added on the Models page and served to the openai SDK, a key made for
someone on the Keys page, used and then revoked (the SDK gets 401), a user's limits and role
changed, usage, the audit log, admin tokens; and the refusal of a person who is not an admin.

Screenshots of every page, at desktop and phone width, go to the test's folder and to
.screenshots-review/admin/ for a person to look at. Playwright never downloads a browser:
Debian's chromium is launched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import openai
import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from llmgateway.keys import KEY_PATTERN

from .conftest import ROOT, GatewayProcess, MockUpstream, model_toml, wait_for
from .idp import LoopbackIdP

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REVIEW = ROOT / ".screenshots-review" / "admin"
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}
HELLO = [{"role": "user", "content": "Hello"}]
API = "/admin/api/v1"
ADMIN = "root@example.edu"
PERSON = "alice@example.edu"
NEW_MODEL = "team/llama-new"
KEY_NAME = '<img src=x onerror=alert(1)> "notebook"'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab that fails the test on a browser dialog (alert/confirm), an uncaught script error or a
    Content-Security-Policy violation: the page must work under `default-src 'self'`."""
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("dialog", lambda dialog: (problems.append("browser dialog: " + dialog.message), dialog.dismiss()))
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: "Content Security Policy" in msg.text and problems.append("CSP: " + msg.text))
    yield tab
    context.close()
    assert problems == []


def shoot(page: Page, folder: Path, name: str) -> None:
    """A full-page screenshot in the test's folder, copied to .screenshots-review/admin/."""
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    REVIEW.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, REVIEW / path.name)


def log_in(page: Page, gw: GatewayProcess, idp: LoopbackIdP, username: str, path: str = "/admin") -> None:
    page.goto(gw.url + path)
    page.wait_for_url(idp.url + "/sso?*")
    page.fill("#username", username)
    page.fill("#password", "secret")
    page.click("#login")
    page.wait_for_url(gw.url + path)


def open_view(page: Page, hash_: str, ready: str) -> None:
    """Go to a view by its hash and wait until `ready` (a selector) shows."""
    page.evaluate("h => { window.location.hash = h; }", hash_)
    expect(page.locator(ready).first).to_be_visible()


def api(page: Page, gw: GatewayProcess, method: str, path: str, body: object = None) -> requests.Response:
    """The admin API with the browser's session, as the page's script calls it."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return requests.request(method, gw.url + API + path, json=body, cookies=cookies, timeout=10,
                            headers={"X-XSRFToken": cookies.get("_xsrf", "")})


def model_line(page: Page, model_id: str) -> Locator:
    """The Models page's row of one model."""
    return page.locator("#models-body tr", has=page.locator(f"td[data-label=Model] span:text-is('{model_id}')"))


def model_ids(client: openai.OpenAI) -> list[str]:
    return [m.id for m in client.models.list()]


def test_an_admin_runs_the_gateway_from_the_browser(page: Page, browser: Browser, saml_gw: GatewayProcess,
                                                    idp: LoopbackIdP, start_mock: Callable[..., MockUpstream],
                                                    tmp_path: Path) -> None:
    gw = saml_gw
    upstream = start_mock()
    # A person logs in to the portal once, so there is someone to manage besides the admin.
    other = browser.new_context()
    log_in(other.new_page(), gw, idp, PERSON, "/portal")
    other.close()

    log_in(page, gw, idp, ADMIN)
    expect(page.locator("#who")).to_have_text("Test Root")
    expect(page.locator("#dev-banner")).to_be_hidden()
    expect(page.locator("#view-users")).to_be_visible()

    see_and_filter_the_users(page, tmp_path)
    change_a_person(page, gw, tmp_path)
    add_a_model(page, upstream, tmp_path)
    client = make_and_use_a_key(page, gw, upstream, tmp_path)
    page_through_keys(page, gw)
    read_the_usage(page, gw, tmp_path)
    restrict_the_key(page, client, tmp_path)
    key_id = revoke_the_key(page, client, tmp_path)
    read_the_audit_log(page, gw, key_id, tmp_path)
    make_and_revoke_a_token(page, gw, tmp_path)
    every_page_at_phone_width(page, key_id, tmp_path)
    remove_the_model(page, gw)


def see_and_filter_the_users(page: Page, tmp_path: Path) -> None:
    """The users list: both people, the admin marked; a search kept in the URL; an empty result explained."""
    expect(page.locator("#users-body tr")).to_have_count(2)
    admin_row = page.locator("#users-body tr", has_text=ADMIN)
    expect(admin_row.locator(".badge.admin")).to_be_visible()
    expect(admin_row.locator("td[data-label=Role]")).to_contain_text("by the IdP")
    expect(page.locator("#users-pager .count")).to_have_text("1–2 of 2")
    shoot(page, tmp_path, "users-desktop")

    page.fill("#users-filter input[name=search]", "alice")
    page.click("#users-filter button[type=submit]")
    expect(page.locator("#users-body tr")).to_have_count(1)
    assert "search=alice" in page.url, "the filter is not kept in the URL"
    page.reload()
    expect(page.locator("#users-filter input[name=search]")).to_have_value("alice")
    expect(page.locator("#users-body tr")).to_have_count(1)
    page.select_option("#users-filter select[name=role]", "admin")
    expect(page.locator("#users-empty")).to_have_text("No users match these filters.")
    page.select_option("#users-filter select[name=role]", "")
    page.click(f"#users-body a:text-is('{PERSON}')")


def change_a_person(page: Page, gw: GatewayProcess, tmp_path: Path) -> None:
    """One person's page: limit overrides saved, the admin role granted and removed, disabled and
    enabled again (each confirmed first)."""
    expect(page.locator("#view-user")).to_be_visible()
    expect(page.locator("#user-title")).to_have_text(f"Test Alice ({PERSON})")
    page.fill("#user-limits input[data-limit=requests_per_minute]", "100")
    page.fill("#user-limits input[data-limit=cost_per_day]", "2.5")
    page.click("#user-limits button[type=submit]")
    expect(page.locator("#user-limits-saved")).to_be_visible()
    assert api(page, gw, "GET", f"/users/{quote(PERSON)}").json()["limits"] == \
        {"requests_per_minute": 100, "cost_per_day": 2.5}
    page.reload()
    expect(page.locator("#user-quota")).to_contain_text("2.50")
    expect(page.locator("#user-limits input[data-limit=requests_per_minute]")).to_have_value("100")

    page.click("#user-admin")
    expect(page.locator("#confirm-text")).to_contain_text(f"Make {PERSON} an admin")
    page.click("#confirm-ok")
    expect(page.locator("#user-facts")).to_contain_text("granted here")
    expect(page.locator("#user-admin")).to_have_text("Remove admin role")
    page.click("#user-admin")
    page.click("#confirm-ok")
    expect(page.locator("#user-admin")).to_have_text("Grant admin role")
    page.click("#user-disable")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-cancel")
    expect(page.locator("#user-facts")).not_to_contain_text("disabled")
    page.click("#user-disable")
    page.click("#confirm-ok")
    expect(page.locator("#user-facts .badge.off")).to_have_text("disabled")
    expect(page.locator("#user-disable")).to_have_text("Enable")
    page.click("#user-disable")
    page.click("#confirm-ok")
    expect(page.locator("#user-disable")).to_have_text("Disable")
    expect(page.locator("#user-keys-empty")).to_be_visible()
    shoot(page, tmp_path, "user-detail-desktop")


def add_a_model(page: Page, upstream: MockUpstream, tmp_path: Path) -> None:
    """Config models are read-only; a taken id is refused in place; an API model is added, then changed."""
    page.click("nav a[data-view=models]")
    for config_model in ("test-model", "other-model"):
        model_row = model_line(page, config_model)
        expect(model_row.locator("td[data-label=Source]")).to_have_text("from config file")
        expect(model_row.locator("a, button")).to_have_count(0)
    page.fill("#model-form input[name=id]", "test-model")
    page.fill("#model-form textarea[name=upstreams]", upstream.url)
    page.click("#model-submit")
    expect(page.locator("#model-form .form-error")).to_contain_text("configuration file")
    expect(page.locator("#model-form input[name=id]")).to_have_class("invalid")
    page.fill("#model-form input[name=id]", NEW_MODEL)
    page.fill("#model-form textarea[name=upstreams]", "http://169.254.169.254/latest")
    page.click("#model-submit")
    expect(page.locator("#model-form .form-error")).to_contain_text("cloud metadata address")
    expect(page.locator("#model-form textarea[name=upstreams]")).to_have_class("invalid")
    page.fill("#model-form textarea[name=upstreams]", upstream.url)
    page.fill("#model-form input[name=prompt_cost_per_1k]", "0.5")
    page.fill("#model-form input[name=completion_cost_per_1k]", "1")
    page.click("#model-submit")
    new_row = model_line(page, NEW_MODEL)
    expect(new_row.locator("td[data-label=Source]")).to_have_text("added here")
    expect(page.locator("#model-form .form-error")).to_be_hidden()
    new_row.locator("a", has_text="Edit").click()
    expect(page.locator("#model-form-title")).to_have_text(f"Change the model {NEW_MODEL}")
    expect(page.locator("#model-form textarea[name=upstreams]")).to_have_value(upstream.url)
    page.fill("#model-form input[name=completion_cost_per_1k]", "2")
    page.click("#model-submit")
    expect(page.locator("#model-form-title")).to_have_text("Add a model")
    expect(new_row.locator("td[data-label='Price / 1k']")).to_have_text("0.5000 / 2.00")
    shoot(page, tmp_path, "models-desktop")


def make_and_use_a_key(page: Page, gw: GatewayProcess, upstream: MockUpstream, tmp_path: Path) -> openai.OpenAI:
    """A key made for a person, shown once; the openai SDK sees the new model within seconds and uses it."""
    page.click("nav a[data-view=keys]")
    page.click("#key-create-card summary")
    page.fill("#key-create input[name=user]", PERSON)
    page.fill("#key-create input[name=name]", KEY_NAME)
    expect(page.locator(f"#key-create .model-choices input[value='{NEW_MODEL}']")).to_be_attached()
    page.click("#key-create button[type=submit]")
    expect(page.locator("#new-key")).to_be_visible()
    key = page.inner_text("#new-key-value")
    assert KEY_PATTERN.match(key)
    assert key in page.inner_text("#example-python") and f"{gw.url}/v1" in page.inner_text("#example-python")
    page.click("#copy-key")
    expect(page.locator("#copied")).to_be_visible()
    expect(page.locator("#keys-filter input[name=user]")).to_have_value(PERSON)
    expect(page.locator("#keys-body td[data-label=Name]")).to_have_text(KEY_NAME)
    assert page.locator("#keys-body img").count() == 0

    client = gw.client(key)
    wait_for(lambda: NEW_MODEL in model_ids(client), timeout=10, what="the new model in GET /v1/models")
    reply = client.chat.completions.create(model=NEW_MODEL, messages=HELLO)
    assert reply.choices[0].message.content
    assert upstream.requests()[-1]["body"]["model"] == NEW_MODEL
    page.click("#new-key-done")
    expect(page.locator("#new-key")).to_be_hidden()
    shoot(page, tmp_path, "keys-desktop")
    return client


def page_through_keys(page: Page, gw: GatewayProcess) -> None:
    """Lists are paged by the server: 60 more keys, 50 a page; the page is kept in the URL."""
    for i in range(60):
        assert api(page, gw, "POST", "/keys", {"user": "bulk@example.edu", "name": f"bulk {i:02d}"}).status_code == 201
    open_view(page, "#keys", "#keys-body tr")
    expect(page.locator("#keys-pager .count")).to_have_text("1–50 of 61")
    expect(page.locator("#keys-body tr")).to_have_count(50)
    page.click("#keys-pager .next")
    expect(page.locator("#keys-pager .count")).to_have_text("51–61 of 61")
    expect(page.locator("#keys-pager .next")).to_be_disabled()
    page.reload()
    expect(page.locator("#keys-pager .count")).to_have_text("51–61 of 61")
    expect(page.locator("#keys-body tr")).to_have_count(11)


def read_the_usage(page: Page, gw: GatewayProcess, tmp_path: Path) -> None:
    """The call shows in the totals, the day chart, the model bars and the top users; the CSV link works."""
    wait_for(lambda: api(page, gw, "GET", "/usage?by=model").json()["totals"]["requests"] >= 1,
             what="the call in the usage report")
    page.click("nav a[data-view=usage]")
    expect(page.locator("#usage-totals .tile[data-label=Requests] .value")).to_have_text("1")
    expect(page.locator("#usage-day-chart svg rect")).to_have_count(2)
    expect(page.locator(f"#usage-models .bar-row[data-model='{NEW_MODEL}']")).to_be_visible()
    expect(page.locator("#usage-users-body td[data-label=User]")).to_have_text(PERSON)
    csv = requests.get(page.get_attribute("#csv-model", "href"), timeout=10,
                       cookies={c["name"]: c["value"] for c in page.context.cookies()})
    assert csv.status_code == 200 and NEW_MODEL in csv.text
    assert "$" not in page.inner_text("#view-usage")
    shoot(page, tmp_path, "usage-desktop")


def restrict_the_key(page: Page, client: openai.OpenAI, tmp_path: Path) -> None:
    """The key changed on its own page: only the new model from now on, no expiry, a limit of its own."""
    open_view(page, f"#keys?user={quote(PERSON)}", "#keys-body tr")
    expect(page.locator("#keys-body tr")).to_have_count(1)
    page.click("#keys-body td[data-label=Name] a")
    expect(page.locator("#key-title")).to_have_text(f"Key “{KEY_NAME}”")
    page.check(f"#key-edit .model-choices input[value='{NEW_MODEL}']")
    page.check("#key-edit input[name=never]")
    page.fill("#key-edit input[data-limit=requests_per_minute]", "30")
    page.click("#key-edit button[type=submit]")
    expect(page.locator("#key-saved")).to_be_visible()
    expect(page.locator("#key-facts")).to_contain_text("Requests per minute: 30")
    expect(page.locator("#key-facts")).to_contain_text("never")
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="test-model", messages=HELLO)
    shoot(page, tmp_path, "key-detail-desktop")


def revoke_the_key(page: Page, client: openai.OpenAI, tmp_path: Path) -> str:
    """Revoked on the Keys page (confirmed): the SDK is refused at once. Returns the key's id."""
    page.click("#view-key .back a")
    expect(page.locator("#keys-body tr")).to_have_count(1)
    expect(page.locator("#keys-body td[data-label=Models]")).to_have_text(NEW_MODEL)
    page.click("#keys-body button.revoke")
    expect(page.locator("#confirm-text")).to_contain_text(KEY_NAME)
    page.click("#confirm-ok")
    expect(page.locator("#keys-body td[data-label=Status]")).to_have_text("revoked")
    expect(page.locator("#keys-body button.revoke")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=NEW_MODEL, messages=HELLO)


    # The key's page, and its usage events.
    page.click("#keys-body td[data-label=Name] a")
    expect(page.locator("#key-facts")).to_contain_text("revoked")
    expect(page.locator("#key-revoke")).to_be_hidden()
    key_id = page.inner_text("#key-facts code >> nth=1")
    page.click("#key-events-link")
    expect(page.locator("#events-body tr")).to_have_count(1)
    expect(page.locator("#events-body td[data-label=Model]")).to_have_text(NEW_MODEL)
    shoot(page, tmp_path, "events-desktop")
    return key_id


def read_the_audit_log(page: Page, gw: GatewayProcess, key_id: str, tmp_path: Path) -> None:
    """The newest entry is the revocation, by this admin through the UI; the model's entries by action prefix."""
    page.click("nav a[data-view=audit]")
    newest = page.locator("#audit-body tr").first
    expect(newest.locator("td[data-label=Action]")).to_have_text("key.revoke")
    expect(newest.locator("td[data-label=Target]")).to_have_text(key_id)
    expect(newest.locator("td[data-label=Through]")).to_have_text("admin UI")
    expect(newest.locator("td[data-label=Actor]")).to_contain_text(ADMIN)
    entries = api(page, gw, "GET", "/audit?limit=1").json()["total"]
    assert entries >= 70, "5 user changes, 2 model changes, 61 keys made, 1 changed, 1 revoked"
    expect(page.locator("#audit-pager .count")).to_have_text(f"1–50 of {entries}")
    shoot(page, tmp_path, "audit-desktop")
    page.fill("#audit-filter input[name=action]", "model.")
    page.click("#audit-filter button[type=submit]")
    expect(page.locator("#audit-body td[data-label=Action]")).to_have_text(["model.update", "model.create"])
    created = page.locator("#audit-body tr").last
    expect(created.locator("td[data-label=Target]")).to_have_text(NEW_MODEL)
    expect(created.locator("td[data-label=Actor]")).to_contain_text(ADMIN)
    page.fill("#audit-filter input[name=action]", "no.such.action")
    page.click("#audit-filter button[type=submit]")
    expect(page.locator("#audit-empty")).to_have_text("No entries match these filters.")


def make_and_revoke_a_token(page: Page, gw: GatewayProcess, tmp_path: Path) -> None:
    """An admin token, shown once, works on the admin API until it is revoked here."""
    page.click("nav a[data-view=tokens]")
    expect(page.locator("#tokens-empty")).to_be_visible()
    page.fill("#token-create input[name=name]", "nightly-report")
    page.click("#token-create button[type=submit]")
    expect(page.locator("#new-token")).to_be_visible()
    token = page.inner_text("#new-token-value")
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(gw.url + API + "/users", headers=bearer, timeout=10).status_code == 200
    expect(page.locator("#tokens-body td[data-label=Name]")).to_have_text("nightly-report")
    shoot(page, tmp_path, "tokens-desktop")
    page.click("#new-token-done")
    page.click("#tokens-body button.revoke")
    page.click("#confirm-ok")
    expect(page.locator("#tokens-body td[data-label=Status]")).to_have_text("revoked")
    assert requests.get(gw.url + API + "/users", headers=bearer, timeout=10).status_code == 401


def every_page_at_phone_width(page: Page, key_id: str, tmp_path: Path) -> None:
    """Each page at 390 px: screenshotted, and none scrolls sideways."""
    page.set_viewport_size(PHONE)
    for name, hash_, ready in [
        ("users", "#users", "#users-body tr"),
        ("user-detail", f"#user/{quote(PERSON)}", "#user-keys-body tr"),
        ("keys", "#keys", "#keys-body tr"),
        ("models", "#models", "#models-body tr"),
        ("usage", "#usage", "#usage-day-chart svg"),
        ("events", f"#events?key={key_id}", "#events-body tr"),
        ("audit", "#audit", "#audit-body tr"),
        ("tokens", "#tokens", "#tokens-body tr"),
    ]:
        open_view(page, hash_, ready)
        shoot(page, tmp_path, f"{name}-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the {name} page scrolls sideways at phone width ({width}px)"


def remove_the_model(page: Page, gw: GatewayProcess) -> None:
    """The API model removed again (confirmed)."""
    page.set_viewport_size(DESKTOP)
    open_view(page, "#models", "#models-body tr")
    model_line(page, NEW_MODEL).locator("button.remove").click()
    expect(page.locator("#confirm-text")).to_contain_text(f"Remove the model {NEW_MODEL}?")
    page.click("#confirm-ok")
    expect(page.locator("#models-body tr")).to_have_count(2)
    assert NEW_MODEL not in [m["id"] for m in api(page, gw, "GET", "/models").json()["items"]]


def test_a_person_who_is_not_an_admin_is_refused(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                                 tmp_path: Path) -> None:
    gw = saml_gw
    anonymous = requests.get(gw.url + "/admin", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"] == "/saml/login?next=%2Fadmin"
    assert requests.get(gw.url + API + "/users", timeout=10).status_code == 401

    log_in(page, gw, idp, PERSON)
    expect(page.locator("h1")).to_have_text("Administrators only")
    assert page.locator("#view-users").count() == 0
    shoot(page, tmp_path, "refused-desktop")
    refused = api(page, gw, "GET", "/users")
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "You are not an administrator of this service."
    assert api(page, gw, "POST", "/tokens", {"name": "sneaky"}).status_code == 403


def test_the_development_login_is_marked_on_the_admin_page(page: Page, start_gateway: Callable[..., GatewayProcess],
                                                           tmp_path: Path) -> None:
    gw = start_gateway(model_toml("test-model", ["http://127.0.0.1:9"]),
                       extra="[portal]\nenabled = true\ndev_login = true\n")
    page.goto(gw.url + "/admin")
    page.wait_for_url(gw.url + "/portal/dev-login?next=%2Fadmin")
    page.fill("input[name=username]", "dev-admin")
    page.check("input[name=admin]")
    page.click("button[type=submit]")
    page.wait_for_url(gw.url + "/admin")
    expect(page.locator("#dev-banner")).to_be_visible()
    expect(page.locator("#who")).to_have_text("dev-admin")
    expect(page.locator("#users-body td[data-label=Username]")).to_have_text("dev-admin")
    shoot(page, tmp_path, "dev-login-desktop")
