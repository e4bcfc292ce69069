"""People for the sign-in tests: a user with a password (``relaypacs users create
--password-prompt``), and a requests session signed in through the /login form."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import requests

from tests.integration.services import run_cli


def make_person(env: Mapping[str, str], facility: str, role: str) -> tuple[str, str, str]:
    """(email, password, token) of a new user made by the CLI as an admin would."""
    email = f"person-{secrets.token_hex(4)}@{facility.lower().replace(' ', '-')}.test"
    password = secrets.token_urlsafe(12)
    out = run_cli(["users", "create", "--email", email, "--facility", facility, "--role", role,
                   "--password-prompt"], env, input=f"{password}\n{password}\n")
    return email, password, out.strip().splitlines()[-1]


def sign_in(base_url: str, email: str, password: str, **kwargs) -> requests.Session:  # noqa: ANN003
    """A requests session signed in at ``base_url``/login (``kwargs`` go to the POST)."""
    browser = requests.Session()
    answer = browser.post(f"{base_url}/login", data={"email": email, "password": password},
                          allow_redirects=False, timeout=10, **kwargs)
    assert answer.status_code == 302, (answer.status_code, answer.text[:300])
    return browser
