"""Everything clm-workers knows about CLM's generations, in one place.

- :mod:`.generations`: what differs between CLM 0.3, 1.9.2 and 1.35
  (worker modules, registration protocol, the variables a worker reads).
- :mod:`.installed`: the CLM that the workers' Python has installed, asked
  rather than assumed (its version, its module map, its worker settings).
- :mod:`.database`: is a file a CLM database, and how it gets CLM's schema
  (CLM's own ``init_database`` where CLM is installed).

Read this package first when CLM ships a new release.
"""
