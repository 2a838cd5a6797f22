"""Telling the world: events, their signed webhook delivery, and delivery off the request path.

Holds: ``events`` (event building and emitting), ``webhooks`` (Standard Webhooks
signing and sending), ``notices`` (bounded background delivery). A new event type
goes in ``events``.

May import: ``core``.
"""
