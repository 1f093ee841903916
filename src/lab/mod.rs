//! `clusterway lab`: a demo topology in network namespaces it owns.
