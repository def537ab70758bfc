from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from mynapoint.api.resident import api as resident_api

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/resident/v1/", resident_api.urls),
]
