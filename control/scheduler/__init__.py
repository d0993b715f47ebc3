"""The scheduler: a pure decision pipeline over a frozen snapshot, and its aiohttp service."""
