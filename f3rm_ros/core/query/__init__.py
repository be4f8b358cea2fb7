"""Query: voxels of a trained field, text relevancy, clusters, grasp candidates and the answers built from them."""
