from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

from mynapoint.api import oidc, provider
from mynapoint.api.resident import api as resident_api

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/resident/v1/", resident_api.urls),
    path("api/provider/v1/", provider.api.urls),
    path("auth/oidc/start", oidc.oidc_start, name="oidc_start"),
    path("auth/oidc/callback", oidc.oidc_callback, name="oidc_callback"),
    path("sandbox/", include("mynapoint.sandbox.urls")),
]
