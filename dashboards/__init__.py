"""The Dash dashboard for the security team: app shell, pages, and the queries they call."""
