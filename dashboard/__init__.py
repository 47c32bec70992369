"""Streamlit investigation dashboard."""
