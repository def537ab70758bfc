"""Django settings. Everything a deployment changes comes from MYNAPOINT_* environment variables.

The embedded default is SQLite (WAL, IMMEDIATE transactions) in ``MYNAPOINT_DATA_DIR`` (default ``./var``);
PostgreSQL is used when ``MYNAPOINT_DATABASE_URL`` is set (postgres://…).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

DATA_DIR = Path(os.environ.get("MYNAPOINT_DATA_DIR", "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    if key := os.environ.get("MYNAPOINT_SECRET_KEY"):
        return key
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("MYNAPOINT_DEBUG", "") == "1"
ALLOWED_HOSTS = [
    h for h in os.environ.get("MYNAPOINT_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h
]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "mynapoint.audit",
    "mynapoint.identity",
    "mynapoint.providers",
    "mynapoint.applications",
    "mynapoint.ledger",
    "mynapoint.grants",
    "mynapoint.settlement",
    "mynapoint.sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mynapoint.config.urls"
WSGI_APPLICATION = "mynapoint.config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

_database_url = os.environ.get("MYNAPOINT_DATABASE_URL")
if _database_url:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "mynapoint.sqlite3"),
            "OPTIONS": {
                # one writer at a time, taken at BEGIN: no upgrade deadlocks between readers that then write
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
            },
            "TEST": {"NAME": str(DATA_DIR / "test-mynapoint.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "ja"
LANGUAGES = [("ja", "日本語"), ("en", "English")]
TIME_ZONE = "Asia/Tokyo"
USE_I18N = True
USE_TZ = True

# a full provider batch (10,000 transactions) is about 3 MB of JSON
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 30 * 60  # a resident session ends itself after 30 minutes
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# --- the programme ---------------------------------------------------------------------------------------
# Parameter edition the platform decides with (see `mynapoint parameters show --list-editions`).
MYNAPOINT_PARAMETER_EDITION = os.environ.get("MYNAPOINT_PARAMETER_EDITION") or None
# JPKI: a folder with the trusted CA certificates (*.pem) and their CRLs (crl*.pem)
MYNAPOINT_JPKI_TRUST_DIR = Path(os.environ.get("MYNAPOINT_JPKI_TRUST_DIR", str(DATA_DIR / "jpki")))
MYNAPOINT_LOGIN_NONCE_SECONDS = int(os.environ.get("MYNAPOINT_LOGIN_NONCE_SECONDS", "300"))
# Provider account verification: until the provider API lands, a registry of accounts loaded from a file
MYNAPOINT_PROVIDER_ADAPTER = os.environ.get(
    "MYNAPOINT_PROVIDER_ADAPTER", "mynapoint.applications.adapters.FileRegistryAdapter"
)
MYNAPOINT_PROVIDER_REGISTRY = Path(
    os.environ.get("MYNAPOINT_PROVIDER_REGISTRY", str(DATA_DIR / "provider_accounts.yaml"))
)
# Row locks around point applications (tests switch them off to show the race they prevent)
MYNAPOINT_APPLICATION_LOCKS = os.environ.get("MYNAPOINT_APPLICATION_LOCKS", "1") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("MYNAPOINT_LOG_LEVEL", "WARNING")},
}

# --- 認証アプリ (OpenID Connect) ---
# The Digital Agency's 認証アプリ as an OpenID provider (authorization code + PKCE S256). An empty issuer switches
# the route off (/auth/oidc/start answers 503). No client secret: a public client, protected by PKCE.
MYNAPOINT_OIDC_ISSUER = os.environ.get("MYNAPOINT_OIDC_ISSUER", "")
MYNAPOINT_OIDC_CLIENT_ID = os.environ.get("MYNAPOINT_OIDC_CLIENT_ID", "")
MYNAPOINT_OIDC_CLIENT_SECRET = os.environ.get("MYNAPOINT_OIDC_CLIENT_SECRET", "")
# Where the provider sends the browser back; empty: this server's /auth/oidc/callback
MYNAPOINT_OIDC_REDIRECT_URI = os.environ.get("MYNAPOINT_OIDC_REDIRECT_URI", "")

# --- parameter what-ifs ---
# Values that replace those of MYNAPOINT_PARAMETER_EDITION, by parameter name (as a scenario's `parameters:`).
# Empty in a deployment; the scenario parity test sets it to decide with a scenario's parameters.
MYNAPOINT_PARAMETER_OVERRIDES: dict[str, object] = {}
