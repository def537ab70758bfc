"""``/sandbox/``: the sandbox provider's JSON API for the demo, and the webhook the platform pushes to."""

from __future__ import annotations

from django.urls import URLPattern, path

from mynapoint.sandbox import views

app_name = "sandbox"

urlpatterns: list[URLPattern] = [
    path("shops", views.shops, name="shops"),
    path("wallets", views.wallets, name="wallets"),
    path("wallets/<str:service_id>", views.wallet, name="wallet"),
    path("wallets/<str:service_id>/charge", views.charge, name="charge"),
    path("wallets/<str:service_id>/pay", views.pay, name="pay"),
    path("webhook", views.webhook, name="webhook"),
    path("sync", views.sync, name="sync"),
]
