"""OCI / Docker image plumbing behind the registry source: references, credentials, manifests,
blob stores (a registry through oras, or an oci-archive file), digests and layer listings.
The Source the core sees is sources.registry.RegistrySource."""
