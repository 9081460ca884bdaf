"""Curvature: Hessian-vector products, extreme eigenvalues, trace and spectral density (`operator`),
and the curvature job behind scripts/plot_hessian_eig.py (`job`)."""
