"""The reliability suite (issue 10): faults injected into the real parts, each test ending with the audit of the
books (conftest.py `assert_books_balance`)."""
