"""Django project configuration for mynapoint."""
